//! Reading and writing a hostile volume safely: every file and folder is reached beneath a root opened once, and
//! no component of its path may be a symbolic link, not even one swapped in after the root was opened.
//!
//! The agent container runs the participant's code, which can write into the volume that logcopy merges and
//! uploads with the Job's AWS role, and into the folders the supervisor repairs. A link from
//! `agent/agent1/leaderboard.log` to `/proc/self/environ`, from `agent/agent2` to a folder of forged results, or
//! from `evalai` to another folder must never be read or written through. `O_NOFOLLOW` protects only the last
//! component, so a [`Root`] opens everything relative to its folder with Linux's
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or, where `openat2` is unavailable (Linux before 5.6, or
//! refused by a seccomp filter), with `openat(O_NOFOLLOW)` one component at a time. Writes open the parent folder
//! that way and then act on a name inside it with the `*at` calls, which never follow the last component.
//! FIFOs, sockets and devices are opened with `O_NONBLOCK` and refused after `fstat`, so they never block.
//!
//! Each binary opens its roots once: logcopy the volume (`--logs`); the supervisor the folders it is given (its
//! status folder, its checkpoint's folder, its log's folder), which are mounts of the volume's sub-folders. A root
//! itself is trusted: it is the operator's configuration, not the participant's.

use crate::layout;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// Whether `openat2` works here: 0 not tried yet, 1 yes, 2 no (the component walk is used).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// A folder opened once, beneath which every path is resolved without following a link.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// The owner (uid, gid) given to a file that a write creates where none was (see [`Root::new_files_owned_by`]).
    new_owner: Option<(u32, u32)>,
}

/// A file whose content cannot be used: why, without the path (the caller names it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("is a symbolic link, or lies beneath one; links on the volume are never followed")]
    Symlink,
    #[error("is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("is {size} bytes, over the {max}-byte cap")]
    TooLarge { size: u64, max: u64 },
    #[error("{}", hard_links(*links))]
    HardLinked { links: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Why a regular file with more than one link is not read: one of its names can be outside the volume (a hostPath
/// volume, a local run: `ln secret agent/agent1/stolen.log`), and nothing on the volume needs a hard link.
fn hard_links(links: u64) -> String {
    format!("has {links} hard links: the same file can be reached from outside the volume, so it is not read")
}

/// A failed write, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What an entry of a folder is, from the listing (links are reported, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
    Other,
}

impl Kind {
    fn of(ft: std::fs::FileType) -> Kind {
        if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_block_device() || ft.is_char_device() {
            Kind::Device
        } else {
            Kind::Other
        }
    }

    fn of_dirent(d_type: u8) -> Option<Kind> {
        Some(match d_type {
            libc::DT_REG => Kind::File,
            libc::DT_DIR => Kind::Dir,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_BLK | libc::DT_CHR => Kind::Device,
            libc::DT_UNKNOWN => return None,
            _ => Kind::Other,
        })
    }

    /// `a directory`, `a FIFO`, ...: how errors and warnings name it.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::Device => "a device",
            Kind::Other => "not a regular file",
        }
    }
}

/// How a file type is named in messages: `a directory`, `a FIFO`, `a socket`, `a device`, ...
pub fn file_kind(ft: std::fs::FileType) -> &'static str {
    Kind::of(ft).describe()
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: OsString,
    pub kind: Kind,
}

/// A regular file found by [`Root::walk`], relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub rel: PathBuf,
}

/// What the walk skipped, for a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub rel: PathBuf,
    pub reason: &'static str,
}

/// A folder descriptor: the root's own, or one opened beneath it.
enum Dir<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl Dir<'_> {
    fn raw(&self) -> RawFd {
        match self {
            Dir::Root(fd) => fd.as_raw_fd(),
            Dir::Owned(fd) => fd.as_raw_fd(),
        }
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The plain components of a relative path; anything else (`..`, `/`, `.`) is refused.
fn components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(invalid("the path is not a plain relative path beneath the root")),
        })
        .collect()
}

/// Turns a `-1` return into the last OS error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a fresh descriptor the caller owns (checked non-negative first).
    check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is owned.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, mode) })
}

fn openat2_beneath(dirfd: RawFd, rel: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid dirfd, NUL-terminated path and a zero-initialised open_how of the right size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd as libc::c_int)
}

/// The fallback: `openat(O_NOFOLLOW)` one component at a time. A link met on the way is `ELOOP`, as with `openat2`.
fn openat_walk(dirfd: RawFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let comps = components(rel)?;
    let mut current: Option<OwnedFd> = None;
    for (i, name) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let c = cstr(name)?;
        let base = current.as_ref().map_or(dirfd, |f| f.as_raw_fd());
        let f = if last { flags } else { libc::O_RDONLY | libc::O_DIRECTORY };
        match openat(base, &c, f, 0) {
            Ok(fd) => current = Some(fd),
            // O_DIRECTORY | O_NOFOLLOW on a link says ENOTDIR: name it as openat2 does.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(base, &c) => {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            Err(e) => return Err(e),
        }
    }
    current.ok_or_else(|| invalid("empty path"))
}

/// The type bits (`S_IFMT`) of `name` in `dir`, not following a link; `None` when nothing is there.
fn file_type_at(dir: RawFd, name: &CStr) -> Option<libc::mode_t> {
    // SAFETY: stat is plain data, filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, a NUL-terminated name and a stat buffer.
    let ok = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0;
    ok.then_some(st.st_mode & libc::S_IFMT)
}

fn is_symlink_at(dir: RawFd, name: &CStr) -> bool {
    file_type_at(dir, name) == Some(libc::S_IFLNK)
}

/// Opens `rel` beneath `dirfd` with `flags`, no link anywhere on the way.
fn open_beneath_fd(dirfd: RawFd, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW;
    if OPENAT2.load(Ordering::Relaxed) != 2 {
        // Refuse `..` and absolute paths up front, as the walk does (openat2 would say EXDEV).
        components(rel)?;
        match openat2_beneath(dirfd, &cstr(rel.as_os_str())?, flags) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                OPENAT2.store(2, Ordering::Relaxed);
            }
            other => {
                OPENAT2.store(1, Ordering::Relaxed);
                return other;
            }
        }
    }
    openat_walk(dirfd, rel, flags)
}

impl Root {
    /// Opens the folder `path` as a root (following links in `path` itself: it is configuration, trusted).
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: a valid NUL-terminated path; the returned fd is owned.
        let fd = owned(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
        Ok(Root { fd, path: path.to_path_buf(), new_owner: None })
    }

    /// Files that an atomic write creates beneath this root where no regular file was (a checkpoint restored
    /// after it went missing) are given to `uid:gid`, as a replacement keeps the owner of the file it replaces: a
    /// root supervisor writing for an evaluator that runs as another user (`--run-as`) leaves every file it writes
    /// there writable by that user. Only a root process can give a file away; elsewhere the file stays the writer's.
    pub fn new_files_owned_by(mut self, uid: u32, gid: u32) -> Root {
        self.new_owner = Some((uid, gid));
        self
    }

    /// Opens the folder of the file `path` (`.` for a bare name) as a root, creating it first when `create`;
    /// returns the root and the file's name in it. For a file the operator names (a checkpoint, a log, a command
    /// line's endpoint): its folder is trusted, the file itself is reached beneath it.
    pub fn open_parent(path: &Path, create: bool) -> io::Result<(Root, PathBuf)> {
        let (dir, name) = split(path);
        if name.is_empty() {
            return Err(invalid("the path has no file name"));
        }
        if create {
            std::fs::create_dir_all(dir)?;
        }
        Ok((Root::open(dir)?, PathBuf::from(name)))
    }

    /// The root's path, as it was given (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `rel` under the root's path, for messages only: never opened.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The folder `rel` (the root itself when empty), opened for reading.
    fn dir(&self, rel: &Path) -> io::Result<Dir<'_>> {
        if rel.as_os_str().is_empty() {
            return Ok(Dir::Root(self.fd.as_fd()));
        }
        open_beneath_fd(self.fd.as_raw_fd(), rel, libc::O_RDONLY | libc::O_DIRECTORY).map(Dir::Owned)
    }

    /// The folder holding `rel` and the last component's name.
    fn parent(&self, rel: &Path) -> io::Result<(Dir<'_>, CString)> {
        let name = match rel.components().next_back() {
            Some(Component::Normal(n)) => cstr(n)?,
            _ => return Err(invalid("the path has no file name")),
        };
        Ok((self.dir(rel.parent().unwrap_or(Path::new("")))?, name))
    }

    /// Opens `rel` for reading: no link anywhere on the way, never blocking, regular files only. Returns the file
    /// and its length at open time.
    pub fn open_read(&self, rel: &Path) -> io::Result<(File, u64)> {
        let fd = open_beneath_fd(self.fd.as_raw_fd(), rel, libc::O_RDONLY | libc::O_NONBLOCK)?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(invalid("not a regular file"));
        }
        if meta.nlink() > 1 {
            return Err(io::Error::other(hard_links(meta.nlink())));
        }
        Ok((file, meta.len()))
    }

    /// Reads the regular file `rel`, up to `max` bytes; `Ok(None)` when it does not exist.
    pub fn read_capped(&self, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let fd = match open_beneath_fd(self.fd.as_raw_fd(), rel, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EXDEV)) => return Err(ReadError::Symlink),
            Err(e) => return Err(e.into()),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(ReadError::NotRegular { kind: file_kind(meta.file_type()) });
        }
        if meta.nlink() > 1 {
            return Err(ReadError::HardLinked { links: meta.nlink() });
        }
        if meta.len() > max {
            return Err(ReadError::TooLarge { size: meta.len(), max });
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        // The file may grow while it is read: never take more than the cap.
        file.take(max + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(ReadError::TooLarge { size: buf.len() as u64, max });
        }
        Ok(Some(buf))
    }

    /// The metadata of `rel` itself (a link is described, never followed); `None` when it does not exist.
    pub fn stat(&self, rel: &Path) -> io::Result<Option<std::fs::Metadata>> {
        if !matches!(rel.components().next_back(), Some(Component::Normal(_))) {
            return Err(invalid("the path has no file name"));
        }
        // One `O_PATH | O_NOFOLLOW` open beneath the root: the last component is never followed, and (with
        // openat2) no folder on the way is opened for reading, which would raise an inotify event in every watcher
        // of the volume (an S3 sync stats 100,000 files each period).
        let found = open_beneath_fd(self.fd.as_raw_fd(), rel, libc::O_PATH);
        match found {
            Ok(fd) => File::from(fd).metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entries of the folder `rel` (the root itself when empty), `.` and `..` left out; `None` when it does
    /// not exist.
    pub fn list(&self, rel: &Path) -> io::Result<Option<Vec<Entry>>> {
        let mut out = Vec::new();
        let found = self.for_each_entry(rel, &mut |name, kind| {
            out.push(Entry { name: OsString::from_vec(name.to_bytes().to_vec()), kind })
        })?;
        Ok(found.then_some(out))
    }

    /// Calls `f` with the names of the first `max` entries of the folder `rel` as they are read (`.` and `..` left
    /// out, in the folder's order), without holding them: `Ok(None)` when the folder does not exist, else whether
    /// entries were left unread.
    pub fn scan_names(&self, rel: &Path, max: usize, f: &mut dyn FnMut(&CStr)) -> io::Result<Option<bool>> {
        let mut seen = 0usize;
        let mut more = false;
        let found = self.for_each_entry_while(rel, &mut |name, _| {
            if seen == max {
                more = true;
                return false;
            }
            seen += 1;
            f(name);
            true
        })?;
        Ok(found.then_some(more))
    }

    /// Calls `f` with each entry of the folder `rel` as it is read, `.` and `..` left out; `false` when the folder
    /// does not exist. A folder of a million entries is never held in memory whole.
    fn for_each_entry(&self, rel: &Path, f: &mut dyn FnMut(&CStr, Kind)) -> io::Result<bool> {
        self.for_each_entry_while(rel, &mut |name, kind| {
            f(name, kind);
            true
        })
    }

    /// As [`Self::for_each_entry`], stopping after the entry for which `f` returns `false`.
    fn for_each_entry_while(&self, rel: &Path, f: &mut dyn FnMut(&CStr, Kind) -> bool) -> io::Result<bool> {
        let dir = match self.dir(rel) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        // fdopendir takes the descriptor: give it a fresh one.
        let fd = openat(dir.raw(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let raw = fd.into_raw_fd();
        // SAFETY: a valid directory descriptor whose ownership passes to the DIR stream.
        let stream = unsafe { libc::fdopendir(raw) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(raw) };
            return Err(e);
        }
        loop {
            // SAFETY: a valid DIR stream; the entry is read before the next readdir call.
            let ent = unsafe { libc::readdir(stream) };
            if ent.is_null() {
                break;
            }
            // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
            let (name, d_type) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
            if name == c"." || name == c".." {
                continue;
            }
            let kind = Kind::of_dirent(d_type).unwrap_or_else(|| {
                // SAFETY: the stream's descriptor stays valid until closedir.
                let fd = unsafe { libc::dirfd(stream) };
                match openat(fd, name, libc::O_PATH, 0).and_then(|f| File::from(f).metadata()) {
                    Ok(m) => Kind::of(m.file_type()),
                    Err(_) => Kind::Other,
                }
            });
            if !f(name, kind) {
                break;
            }
        }
        // SAFETY: a valid DIR stream, closed once.
        unsafe { libc::closedir(stream) };
        Ok(true)
    }

    /// Every regular file beneath the root, sorted, never descending into a link. Links, FIFOs, sockets and
    /// devices are reported in `skipped`. `exclude` filters relative paths (files and folders).
    pub fn walk(&self, exclude: &dyn Fn(&Path) -> bool) -> (Vec<Found>, Vec<Skipped>) {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            // Each entry is filtered as it is read: what `exclude` turns away is never held.
            let _ = self.for_each_entry(&dir, &mut |name, kind| {
                let rel = dir.join(OsStr::from_bytes(name.to_bytes()));
                if exclude(&rel) {
                    return;
                }
                match kind {
                    Kind::Dir => stack.push(rel),
                    Kind::File => files.push(Found { rel }),
                    Kind::Symlink => skipped.push(Skipped { rel, reason: "a symbolic link (never followed)" }),
                    other => {
                        let reason = match other {
                            Kind::Fifo => "a FIFO, not a regular file",
                            Kind::Socket => "a socket, not a regular file",
                            Kind::Device => "a device, not a regular file",
                            _ => "not a regular file",
                        };
                        skipped.push(Skipped { rel, reason });
                    }
                }
            });
        }
        files.sort_by(|a, b| a.rel.cmp(&b.rel));
        (files, skipped)
    }

    /// Creates the folder `rel` and its missing parents (mode 0777 less the umask), one component at a time; an
    /// existing link on the way is an error, never followed.
    pub fn create_dir_all(&self, rel: &Path) -> io::Result<()> {
        let mut current = Dir::Root(self.fd.as_fd());
        for name in components(rel)? {
            let c = cstr(name)?;
            let open = |dir: &Dir<'_>| match openat(dir.raw(), &c, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink_at(dir.raw(), &c) => {
                    Err(io::Error::from_raw_os_error(libc::ELOOP))
                }
                other => other,
            };
            let next = match open(&current) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // SAFETY: a valid descriptor and a NUL-terminated name.
                    match check(unsafe { libc::mkdirat(current.raw(), c.as_ptr(), 0o777) }) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                        _ => open(&current)?,
                    }
                }
                other => other?,
            };
            current = Dir::Owned(next);
        }
        Ok(())
    }

    /// Creates the empty file `rel` (a marker) with `mode` less the umask; `Ok(false)` when something of that name
    /// already exists (left as it is, a link included).
    pub fn create_new(&self, rel: &Path, mode: u32) -> io::Result<bool> {
        let (dir, name) = self.parent(rel)?;
        match openat(dir.raw(), &name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode as libc::mode_t) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates the new regular file `rel` for reading and writing with exactly `mode` (`fchmod`, whatever the
    /// umask); whatever was at `rel` (a file, a link) is removed first, never followed. The parent folder must
    /// exist.
    pub fn create_file(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        if file_type_at(dir.raw(), &name).is_some_and(|t| t != libc::S_IFDIR) {
            unlink(dir.raw(), &name);
        }
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let file = File::from(openat(dir.raw(), &name, flags, 0o600)?);
        // SAFETY: fchmod on a descriptor we own.
        check(unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) })?;
        Ok(file)
    }

    /// Sets the mode of the folder `rel` (the root itself when empty), reached with no link on the way.
    pub fn set_dir_mode(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let dir = self.dir(rel)?;
        // SAFETY: fchmod on a valid descriptor.
        check(unsafe { libc::fchmod(dir.raw(), mode as libc::mode_t) }).map(drop)
    }

    /// Opens the regular file `rel` for appending, creating it with `mode` less the umask (a log: never truncated).
    pub fn append(&self, rel: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        // O_NONBLOCK: a FIFO in its place must not block the open (ENXIO without a reader); refused below.
        let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NONBLOCK;
        let file = File::from(openat(dir.raw(), &name, flags, mode as libc::mode_t)?);
        if !file.metadata()?.file_type().is_file() {
            return Err(invalid("not a regular file"));
        }
        // SAFETY: F_SETFL on a descriptor we own.
        check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) })?;
        Ok(file)
    }

    /// Writes `bytes` to `rel` atomically: see [`Root::write_atomic_with`].
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8]) -> Result<(), WriteError> {
        self.write_atomic_with(rel, |f| f.write_all(bytes))
    }

    /// Writes `rel` atomically: `fill` writes a temporary file in the same folder (mode 0666 less the umask), which
    /// is `fsync`ed and renamed over `rel`, and the folder is `fsync`ed. Readers see the old bytes or the new ones,
    /// never a mix; a failed write leaves the old file whole and no temporary file. A link at `rel` is replaced,
    /// never written through; the parent folder must exist.
    pub fn write_atomic_with(
        &self,
        rel: &Path,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        self.replace(rel, fill, true)
    }

    /// [`Root::write_atomic_with`] without the two `fsync`s: as atomic for readers, but a crash of the machine
    /// can lose the file. For a store that checks what it holds before it relies on it (the embedded stand-in for
    /// S3, whose objects the run's end lists and uploads again where missing): 100,000 objects are 200,000 `fsync`s.
    pub fn write_atomic_unsynced(
        &self,
        rel: &Path,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        self.replace(rel, fill, false)
    }

    fn replace(
        &self,
        rel: &Path,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
        durable: bool,
    ) -> Result<(), WriteError> {
        let err = |source| WriteError { path: self.display(rel), source };
        let (dir, name) = self.parent(rel).map_err(err)?;
        let tmp = self.write_temp_in(&dir, &name, fill, durable).map_err(err)?;
        let renamed = renameat(dir.raw(), &tmp, dir.raw(), &name);
        if let Err(e) = renamed {
            unlink(dir.raw(), &tmp);
            return Err(err(e));
        }
        if durable { fsync(dir.raw()).map_err(err) } else { Ok(()) }
    }

    /// Writes `bytes` to a fresh temporary file beside `rel` (`fsync`ed) and returns its path relative to the root;
    /// with [`Root::rename`], for a replacement that must do something between the two steps.
    pub fn write_temp(&self, rel: &Path, bytes: &[u8]) -> Result<PathBuf, WriteError> {
        let err = |source| WriteError { path: self.display(rel), source };
        let (dir, name) = self.parent(rel).map_err(err)?;
        let tmp = self.write_temp_in(&dir, &name, |f| f.write_all(bytes), true).map_err(err)?;
        Ok(rel.with_file_name(OsStr::from_bytes(tmp.to_bytes())))
    }

    fn write_temp_in(
        &self,
        dir: &Dir<'_>,
        name: &CStr,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
        durable: bool,
    ) -> io::Result<CString> {
        let tmp = CString::new(layout::temp_name(&name.to_string_lossy())).map_err(|_| invalid("NUL in path"))?;
        // A leftover of an earlier process with the same pid (PID 1 in a restarted container): start afresh.
        unlink(dir.raw(), &tmp);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let mut file = File::from(openat(dir.raw(), &tmp, flags, 0o666)?);
        let written = fill(&mut file)
            .and_then(|()| keep_owner_and_mode(dir.raw(), name, &file, self.new_owner))
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) });
        if let Err(e) = written {
            unlink(dir.raw(), &tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Renames `from` to `to` (both beneath the root), replacing `to`; a link at either is moved or replaced
    /// itself, never followed. The folder of `to` is then `fsync`ed.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        renameat(from_dir.raw(), &from_name, to_dir.raw(), &to_name)?;
        fsync(to_dir.raw())
    }

    /// Removes the file `rel` (a link itself, never its target).
    pub fn remove_file(&self, rel: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        // SAFETY: a valid descriptor and a NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.raw(), name.as_ptr(), 0) }).map(drop)
    }
}

/// A replacement keeps the owner and the permission bits (`0o777`: never set-id bits) of the regular file it
/// replaces, as the evaluator's own in-place `open(path, 'w')` would: a root supervisor that repairs the checkpoint of
/// an evaluator running as another user (`--run-as`) must leave it writable by that user. A new file keeps the
/// writer's owner and mode, or `new_owner` when set ([`Root::new_files_owned_by`]). A failed `fchown` (a writer that
/// is not root cannot give a file away) is not an error.
fn keep_owner_and_mode(dir: RawFd, name: &CStr, file: &File, new_owner: Option<(u32, u32)>) -> io::Result<()> {
    // SAFETY: stat is plain data, filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, a NUL-terminated name and a stat buffer.
    let found = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0;
    if !found || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        if let Some((uid, gid)) = new_owner {
            // SAFETY: fchown on a descriptor we own.
            unsafe { libc::fchown(file.as_raw_fd(), uid, gid) };
        }
        return Ok(());
    }
    // SAFETY: fchown and fchmod on a descriptor we own.
    unsafe { libc::fchown(file.as_raw_fd(), st.st_uid, st.st_gid) };
    // SAFETY: as above.
    check(unsafe { libc::fchmod(file.as_raw_fd(), st.st_mode & 0o777) }).map(drop)
}

/// Renames, replacing `to` only when it is a regular file or a link: never a device (as root, a rename over
/// `/dev/null` turns it into a regular file that every later `>/dev/null` fills), a FIFO or a folder.
fn renameat(from_dir: RawFd, from: &CStr, to_dir: RawFd, to: &CStr) -> io::Result<()> {
    if let Some(kind) = file_type_at(to_dir, to)
        && kind != libc::S_IFREG
        && kind != libc::S_IFLNK
    {
        return Err(io::Error::other("is not a regular file; refusing to replace it"));
    }
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe { libc::renameat(from_dir, from.as_ptr(), to_dir, to.as_ptr()) }).map(drop)
}

fn unlink(dir: RawFd, name: &CStr) {
    // SAFETY: a valid descriptor and a NUL-terminated name; a failure (nothing there) is of no interest.
    unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
}

fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync on a valid descriptor.
    check(unsafe { libc::fsync(fd) }).map(drop)
}

/// The folder of `path` (`.` for a bare name) and its file name (empty when it has none, which every open refuses).
pub fn split(path: &Path) -> (&Path, &OsStr) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    (dir, path.file_name().unwrap_or_default())
}

/// An object key for `rel`, or why the name cannot be one (invalid UTF-8, control characters, odd components).
pub fn object_key(prefix: &str, rel: &Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => {
                let s = n.to_str().ok_or("the name is not valid UTF-8")?;
                if s.chars().any(|c| c.is_control()) {
                    return Err("the name holds a control character (newline, tab, ...)");
                }
                parts.push(s);
            }
            _ => return Err("the path has a `..`, `.` or root component"),
        }
    }
    if parts.is_empty() {
        return Err("empty path");
    }
    Ok(format!("{prefix}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The participant can write the worker folder (0777, no sticky bit) and guess a temporary name (it holds the
    /// pid): a link planted there, to a root-only file, must never be written through by a root writer (issue 19,
    /// break 1: `RouteRetries::save` once wrote `.agent_results.json.tmp` with `std::fs::write`, which follows it).
    #[test]
    fn a_link_planted_at_the_temporary_name_is_never_written_through() {
        let base = std::env::temp_dir().join(format!("volume-safe-planted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("worker")).unwrap();
        let secret = base.join("root-only");
        std::fs::write(&secret, b"keep").unwrap();
        let planted = base.join("worker").join(crate::layout::temp_name("agent_results.json"));
        std::os::unix::fs::symlink(&secret, &planted).unwrap();
        let root = Root::open(&base.join("worker")).unwrap();
        root.write_atomic(Path::new("agent_results.json"), b"new").unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep", "written through the planted link");
        assert_eq!(std::fs::read(base.join("worker/agent_results.json")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(base.join("worker/agent_results.json")).unwrap().file_type().is_symlink());
        let _ = std::fs::remove_dir_all(&base);
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("volume-safe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `stat` describes a link, never its target (kept so by its one `O_PATH | O_NOFOLLOW` open beneath the root).
    #[test]
    fn stat_describes_a_link_never_its_target() {
        let d = tmp("stat-link");
        std::fs::write(d.join("target"), b"0123456789").unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.join("target"), d.join("sub/link")).unwrap();
        let root = Root::open(&d.join("sub")).unwrap();
        let meta = root.stat(Path::new("link")).unwrap().unwrap();
        assert!(meta.file_type().is_symlink(), "followed the link: {meta:?}");
        assert!(root.stat(Path::new("missing")).unwrap().is_none());
        assert!(root.stat(Path::new("")).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn walk_skips_links_and_special_files() {
        let d = tmp("walk");
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f.log"), b"x").unwrap();
        std::fs::write(d.join("top.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("a/etc-link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.join("a/host")).unwrap();
        std::os::unix::fs::symlink(".", d.join("a/loop")).unwrap();
        let (files, skipped) = Root::open(&d).unwrap().walk(&|p| p.starts_with("excluded"));
        let rels: Vec<_> = files.iter().map(|f| f.rel.to_string_lossy().into_owned()).collect();
        assert_eq!(rels, ["a/b/f.log", "top.json"]);
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn open_read_refuses_links_anywhere_on_the_path() {
        let d = tmp("open");
        std::fs::create_dir_all(d.join("real")).unwrap();
        std::fs::write(d.join("real/f.log"), b"hello").unwrap();
        std::fs::write(d.join("secret"), b"s3cr3t").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("real/leak.log")).unwrap();
        let root = Root::open(&d).unwrap();
        let (mut f, len) = root.open_read(Path::new("real/f.log")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("hello", 5));
        assert!(root.open_read(Path::new("dirlink/f.log")).is_err(), "a symlinked folder was followed");
        assert!(root.open_read(Path::new("real/leak.log")).is_err(), "a symlinked file was followed");
        assert!(root.open_read(Path::new("../x")).is_err());
        // The fallback walk refuses the same paths, and names a link as openat2 does.
        let walk = |p: &str| openat_walk(root.fd.as_raw_fd(), Path::new(p), libc::O_RDONLY | libc::O_NOFOLLOW);
        assert_eq!(walk("dirlink/f.log").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert_eq!(walk("real/leak.log").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        assert!(walk("real/f.log").is_ok());
        assert!(walk("../x").is_err());
    }

    #[test]
    fn capped_reads() {
        let d = tmp("capped");
        let root = Root::open(&d).unwrap();
        assert!(root.read_capped(Path::new("none.json"), 10).unwrap().is_none());
        std::fs::write(d.join("f.json"), b"0123456789").unwrap();
        assert_eq!(root.read_capped(Path::new("f.json"), 10).unwrap().unwrap(), b"0123456789");
        assert!(matches!(root.read_capped(Path::new("f.json"), 9), Err(ReadError::TooLarge { size: 10, max: 9 })));
        assert!(root.read_capped(Path::new("../f.json"), 9).is_err());
        std::fs::create_dir(d.join("dir")).unwrap();
        assert!(matches!(root.read_capped(Path::new("dir"), 9), Err(ReadError::NotRegular { kind: "a directory" })));
        let fifo = CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(root.read_capped(Path::new("fifo"), 9), Err(ReadError::NotRegular { kind: "a FIFO" })));
        assert!(root.append(Path::new("fifo"), 0o644).is_err(), "a FIFO opened as a log");
    }

    #[test]
    fn writes_replace_links_and_leave_no_temporary_file() {
        let d = tmp("write");
        let root = Root::open(&d).unwrap();
        let target = d.join("outside");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, d.join("out.json")).unwrap();
        root.write_atomic(Path::new("out.json"), b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.join("out.json")).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(d.join("out.json")).unwrap().file_type().is_symlink());
        let e = root.write_atomic(Path::new("no-such-dir/x.json"), b"x").unwrap_err();
        assert!(e.to_string().contains("no-such-dir/x.json"), "{e}");
        let failed = root.write_atomic_with(Path::new("out.json"), |_| Err(io::Error::other("disk full")));
        assert!(failed.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read(d.join("out.json")).unwrap(), b"new");
        let names: Vec<String> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| n.starts_with(layout::TEMP_PREFIX)), "{names:?}");

        // A temporary file and a rename, for replacements in two steps.
        let tmp = root.write_temp(Path::new("sub.json"), b"two").unwrap();
        root.rename(&tmp, Path::new("sub.json")).unwrap();
        assert_eq!(std::fs::read(d.join("sub.json")).unwrap(), b"two");
        root.remove_file(Path::new("sub.json")).unwrap();
        assert!(root.stat(Path::new("sub.json")).unwrap().is_none());
        assert!(root.stat(Path::new("out.json")).unwrap().unwrap().is_file());
    }

    #[test]
    fn markers_logs_and_folders() {
        let d = tmp("misc");
        let root = Root::open(&d).unwrap();
        root.create_dir_all(Path::new("a/b/c")).unwrap();
        root.create_dir_all(Path::new("a/b")).unwrap();
        assert!(d.join("a/b/c").is_dir());
        assert!(root.create_new(Path::new("a/m.done"), 0o666).unwrap());
        assert!(!root.create_new(Path::new("a/m.done"), 0o666).unwrap());
        let mut log = root.append(Path::new("a/x.log"), 0o644).unwrap();
        log.write_all(b"one\n").unwrap();
        let mut log = root.append(Path::new("a/x.log"), 0o644).unwrap();
        log.write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read(d.join("a/x.log")).unwrap(), b"one\ntwo\n");
        let mut names: Vec<(String, Kind)> = root
            .list(Path::new("a"))
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.into_string().unwrap(), e.kind))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(names, [("b".into(), Kind::Dir), ("m.done".into(), Kind::File), ("x.log".into(), Kind::File)]);
        assert!(root.list(Path::new("nothing")).unwrap().is_none());
        assert_eq!(root.list(Path::new("")).unwrap().unwrap().len(), 1);
    }

    /// Every folder of the layout swapped for a link (to a folder outside, to `/proc`): nothing is read from or
    /// written outside the root, by any operation, with `openat2` and with the component walk that replaces it on
    /// older kernels. (Other tests that run meanwhile may take the walk too: both must be right.)
    #[test]
    fn layout_folders_linked_outside_are_neither_read_nor_written() {
        let folders: Vec<PathBuf> = layout::GEN1_DIRS
            .iter()
            .map(PathBuf::from)
            .chain([layout::worker_dir(2), PathBuf::from(layout::LOGS_DIR)])
            .collect();
        let modes = [(0, "openat2"), (2, "the component walk")];
        for (target, (mode, how)) in ["outside", "/proc/self"].into_iter().flat_map(|t| modes.map(|m| (t, m))) {
            OPENAT2.store(mode, Ordering::Relaxed);
            for folder in &folders {
                let d = tmp("linked");
                let vol = d.join("vol");
                let outside = d.join("outside");
                std::fs::create_dir_all(vol.join(layout::AGENT_DIR)).unwrap();
                std::fs::create_dir_all(&outside).unwrap();
                std::fs::write(outside.join(layout::RESULTS_FILE), b"{\"forged\": 1}").unwrap();
                std::fs::write(outside.join("x.log"), b"forged").unwrap();
                let before: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().path()).collect();
                let link_target = if target == "outside" { outside.clone() } else { PathBuf::from(target) };
                let _ = std::fs::remove_dir(vol.join(folder));
                std::os::unix::fs::symlink(&link_target, vol.join(folder)).unwrap();

                let root = Root::open(&vol).unwrap();
                let file = folder.join(layout::RESULTS_FILE);
                let what = format!("{} -> {target} ({how})", folder.display());
                assert!(matches!(root.read_capped(&file, 1 << 20), Err(ReadError::Symlink)), "{what}: read");
                assert!(root.read_capped(&folder.join("status"), 1 << 20).is_err(), "{what}: /proc read");
                assert!(root.open_read(&folder.join("x.log")).is_err(), "{what}: open");
                assert!(root.stat(&file).is_err(), "{what}: stat");
                assert!(root.list(folder).is_err(), "{what}: list");
                assert!(root.write_atomic(&file, b"new").is_err(), "{what}: atomic write");
                assert!(root.write_temp(&file, b"new").is_err(), "{what}: temporary file");
                assert!(root.append(&folder.join("x.log"), 0o644).is_err(), "{what}: append");
                assert!(root.create_new(&folder.join("agent-1.done"), 0o666).is_err(), "{what}: marker");
                assert!(root.create_dir_all(&folder.join("sub")).is_err(), "{what}: mkdir");
                assert!(root.rename(&file, Path::new("moved")).is_err(), "{what}: rename");
                assert!(root.remove_file(&file).is_err(), "{what}: remove");
                let (files, skipped) = root.walk(&|_| false);
                assert!(files.iter().all(|f| !f.rel.starts_with(folder)), "{what}: walked into the link");
                assert!(skipped.iter().any(|s| &s.rel == folder || folder.starts_with(&s.rel)), "{what}: {skipped:?}");
                let after: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().path()).collect();
                assert_eq!(after, before, "{what}: the folder outside changed");
                assert_eq!(std::fs::read(outside.join("x.log")).unwrap(), b"forged", "{what}");
                std::fs::remove_dir_all(&d).unwrap();
            }
        }
        OPENAT2.store(0, Ordering::Relaxed);
    }

    #[test]
    fn object_keys() {
        assert_eq!(object_key("42", Path::new("agent/agent1/a.json")).unwrap(), "42/agent/agent1/a.json");
        assert!(object_key("42", Path::new("a/bad\nname")).is_err());
        let bad = OsStr::from_bytes(b"x\xff");
        assert!(object_key("42", Path::new(bad)).is_err());
        assert!(object_key("42", Path::new("../up")).is_err());
    }
}
