//! Where the volume's files go: S3, or a local folder standing in for it (`OUT/s3/`), behind one interface so
//! that the sync, the manifest and the restore run the same code in both cases.
//!
//! Uploads stream from an already-opened file (opened beneath the volume root without following links, see
//! [`volume::safe`]), never reading a whole file into memory; files from [`MULTIPART_THRESHOLD`] up go
//! as multipart uploads of [`PART_SIZE`] parts, and a failed multipart upload is aborted.

use super::Lane;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use volume::layout::TEMP_PREFIX;
use volume::safe::Root;

/// How much the local store copies in one blocking step.
const COPY_CHUNK: u64 = 8 * 1024 * 1024;

/// Files at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;
/// The size of each part but the last (S3's minimum is 5 MiB), for files up to `PART_SIZE * MAX_PARTS` (78 GiB).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
/// S3's most parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// The part size of a multipart upload of `len` bytes: [`PART_SIZE`], or for a file over 78 GiB the smallest whole
/// number of MiB that needs no more than [`MAX_PARTS`] parts (S3 refuses part 10,001), at most [`MAX_PART_SIZE`].
pub fn part_size(len: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    len.div_ceil(MAX_PARTS).div_ceil(MIB).saturating_mul(MIB).clamp(PART_SIZE, MAX_PART_SIZE)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {key}: {reason}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub reason: String,
}

fn err(op: &'static str, key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError { op, key: key.to_string(), reason: reason.to_string() }
}

/// An object in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// How many requests an upload took (for the benchmark and the logs), and the stored object's ETag when the store
/// gave one (a conditional write of the same key names it: [`PutCondition::IfMatch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutStats {
    pub requests: u32,
    pub etag: Option<String>,
}

/// The precondition of a conditional write ([`ObjectStore::put_bytes`]): S3's `If-None-Match: *` and `If-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Written whatever is there.
    Always,
    /// Written only when no object has the key (`If-None-Match: *`).
    IfAbsent,
    /// Written only when the object's ETag is this one (`If-Match`).
    IfMatch(String),
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written; the new object's ETag.
    Written { etag: String },
    /// The precondition failed (S3's 412): nothing was written.
    PreconditionFailed,
}

/// What a conditional read ([`ObjectStore::get_bytes`]) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetOutcome {
    /// The object and its ETag.
    Found { body: Vec<u8>, etag: String },
    /// Its ETag is still the one given as `if_none_match` (S3's 304): no body was sent.
    NotModified,
    /// Its ETag is not the one given as `if_match` (S3's 412): it changed since.
    Changed,
    /// No object has the key.
    Missing,
}

/// The conditions of a read ([`ObjectStore::get_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetCondition<'a> {
    /// `If-None-Match`: [`GetOutcome::NotModified`] when the ETag is this one.
    pub if_none_match: Option<&'a str>,
    /// `If-Match`: [`GetOutcome::Changed`] when the ETag is not this one.
    pub if_match: Option<&'a str>,
}

/// An object store: S3 or a local folder.
pub trait ObjectStore: Send + Sync + 'static {
    /// `s3://bucket` or the local folder, for logs.
    fn describe(&self) -> String;
    /// Uploads `len` bytes of `file` (positioned anywhere; read from its start) as `key`.
    fn put(&self, key: &str, file: File, len: u64) -> impl Future<Output = Result<PutStats, StoreError>> + Send;
    /// Every object under `prefix` (a LIST; used by restore only).
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;
    /// Streams `key` into `dest` (a new file); returns the bytes written.
    fn get(&self, key: &str, dest: File) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Deletes `keys`.
    fn delete(&self, keys: &[String]) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes a small object (held in memory) under a precondition.
    fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        cond: PutCondition,
    ) -> impl Future<Output = Result<PutOutcome, StoreError>> + Send;
    /// Reads a small object under conditions; an object over `max` bytes is an error (nothing more is read).
    fn get_bytes(
        &self,
        key: &str,
        cond: GetCondition<'_>,
        max: u64,
    ) -> impl Future<Output = Result<GetOutcome, StoreError>> + Send;
}

/// Per-attempt timeout of S3 and DynamoDB requests when none is configured (`--storage-timeout`).
pub const DEFAULT_STORAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The AWS SDK configuration from the standard chain (AWS_ENDPOINT_URL, AWS_REGION, IRSA, ...), with a timeout
/// on every request attempt and on connecting: the SDK sets none of its own, so a server that accepts and never
/// answers would hold an upload (and the final flush) forever. A timed-out attempt is retried by the SDK.
pub async fn sdk_config(attempt_timeout: std::time::Duration) -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(attempt_timeout.min(std::time::Duration::from_secs(10)))
        .operation_attempt_timeout(attempt_timeout)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts).load().await
}

/// Amazon S3 (or anything that speaks its protocol, e.g. moto_server through AWS_ENDPOINT_URL).
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    pub fn new(config: &aws_config::SdkConfig, bucket: &str) -> Self {
        // A custom endpoint (a local server) is addressed by path: `bucket.127.0.0.1` does not resolve.
        let path_style = config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(path_style).build();
        S3Store { client: aws_sdk_s3::Client::from_conf(conf), bucket: bucket.to_string() }
    }

    async fn body(file: &File, offset: u64, len: u64, key: &str) -> Result<ByteStream, StoreError> {
        // A clone shares the file's offset, which an earlier attempt left at its end: seek it where this body starts
        // (the builder's own offset is relative to where the file is).
        let mut f = file.try_clone().map_err(|e| err("open", key, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| err("read", key, e))?;
        ByteStream::read_from()
            .file(tokio::fs::File::from_std(f))
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| err("read", key, e))
    }

    async fn put_multipart(
        &self,
        key: &str,
        file: &File,
        len: u64,
        transient: &AtomicBool,
    ) -> Result<PutStats, StoreError> {
        let c = &self.client;
        let created = c
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| fail("create multipart upload", key, e, transient))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let mut stats = PutStats { requests: 1, etag: None };
        let part = part_size(len);
        let result: Result<Vec<CompletedPart>, StoreError> = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1;
            while offset < len {
                let n = part.min(len - offset);
                let out = c
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(n as i64)
                    .body(Self::body(file, offset, n, key).await?)
                    .send()
                    .await
                    .map_err(|e| fail("upload part", key, e, transient))?;
                stats.requests += 1;
                parts.push(
                    CompletedPart::builder().set_e_tag(out.e_tag().map(String::from)).part_number(number).build(),
                );
                offset += n;
                number += 1;
            }
            Ok(parts)
        }
        .await;
        let parts = match result {
            Ok(p) => p,
            Err(e) => {
                let _ = c.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
                return Err(e);
            }
        };
        let done = c
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| fail("complete multipart upload", key, e, transient))?;
        stats.requests += 1;
        stats.etag = done.e_tag().map(String::from);
        Ok(stats)
    }

    async fn put_single(
        &self,
        key: &str,
        file: &File,
        len: u64,
        transient: &AtomicBool,
    ) -> Result<PutStats, StoreError> {
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len as i64)
            .body(Self::body(file, 0, len, key).await?)
            .send()
            .await
            .map_err(|e| fail("put", key, e, transient))?;
        Ok(PutStats { requests: 1, etag: out.e_tag().map(String::from) })
    }
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    async fn put(&self, key: &str, file: File, len: u64) -> Result<PutStats, StoreError> {
        // A body streamed from an open file cannot be rebuilt by the SDK, so it retries no upload: a 503 (SlowDown)
        // or a dropped connection would leave the file to the next sync, and a final flush has none. Each attempt
        // here reads the file again from its descriptor.
        let mut tries = 1;
        loop {
            let transient = AtomicBool::new(false);
            let r = if len >= MULTIPART_THRESHOLD {
                self.put_multipart(key, &file, len, &transient).await
            } else {
                self.put_single(key, &file, len, &transient).await
            };
            match r {
                Err(_) if tries < PUT_TRIES && transient.load(Ordering::Relaxed) => {
                    let base = PUT_BACKOFF.saturating_mul(1 << (tries - 1));
                    tokio::time::sleep(base + base.mul_f64(fastrand::f64())).await;
                    tries += 1;
                }
                r => {
                    return r.map(|mut stats| {
                        stats.requests += tries - 1;
                        stats
                    });
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| err("list", prefix, DisplayErrorContext(e)))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo { key: k.to_string(), size: o.size().unwrap_or(0).max(0) as u64 });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn get(&self, key: &str, dest: File) -> Result<u64, StoreError> {
        let mut obj = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err("get", key, DisplayErrorContext(e)))?;
        let mut w = std::io::BufWriter::new(dest);
        let mut n = 0u64;
        while let Some(chunk) = obj.body.try_next().await.map_err(|e| err("get", key, e))? {
            w.write_all(&chunk).map_err(|e| err("write", key, e))?;
            n += chunk.len() as u64;
        }
        w.flush().map_err(|e| err("write", key, e))?;
        Ok(n)
    }

    async fn put_bytes(&self, key: &str, body: Vec<u8>, cond: PutCondition) -> Result<PutOutcome, StoreError> {
        let len = body.len() as i64;
        let conditional = cond != PutCondition::Always;
        let mut req = self.client.put_object().bucket(&self.bucket).key(key).content_length(len).body(body.into());
        req = match cond {
            PutCondition::Always => req,
            PutCondition::IfAbsent => req.if_none_match("*"),
            PutCondition::IfMatch(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(PutOutcome::Written { etag: out.e_tag().unwrap_or_default().to_string() }),
            // 412, 409 (a concurrent conditional write of the same key won) and, for `If-Match`, 404 (no object
            // has the key): not written.
            Err(e) if conditional && matches!(http_status(&e), Some(412 | 409 | 404)) => {
                Ok(PutOutcome::PreconditionFailed)
            }
            Err(e) => Err(err("put", key, DisplayErrorContext(e))),
        }
    }

    async fn get_bytes(&self, key: &str, cond: GetCondition<'_>, max: u64) -> Result<GetOutcome, StoreError> {
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_if_none_match(cond.if_none_match.map(String::from))
            .set_if_match(cond.if_match.map(String::from));
        let mut obj = match req.send().await {
            Ok(o) => o,
            Err(e) => {
                return match http_status(&e) {
                    Some(304) => Ok(GetOutcome::NotModified),
                    Some(412) => Ok(GetOutcome::Changed),
                    Some(404) => Ok(GetOutcome::Missing),
                    _ => Err(err("get", key, DisplayErrorContext(e))),
                };
            }
        };
        let etag = obj.e_tag().unwrap_or_default().to_string();
        if obj.content_length().is_some_and(|n| n as u64 > max) {
            return Err(err("get", key, format!("{} bytes, over the cap of {max}", obj.content_length().unwrap_or(0))));
        }
        let mut body = Vec::new();
        while let Some(chunk) = obj.body.try_next().await.map_err(|e| err("get", key, e))? {
            if (body.len() + chunk.len()) as u64 > max {
                return Err(err("get", key, format!("over the cap of {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(GetOutcome::Found { body, etag })
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for chunk in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> =
                chunk.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let delete =
                Delete::builder().set_objects(Some(objects)).build().map_err(|e| err("delete", &chunk[0], e))?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| err("delete", &chunk[0], DisplayErrorContext(e)))?;
        }
        Ok(())
    }
}

/// Attempts of one upload when the store answers with a transient fault (5xx, 429, a timeout, a dropped
/// connection), and the first wait between two (doubled each time, plus up to as much again at random).
const PUT_TRIES: u32 = 4;
const PUT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether a failed request may succeed if sent again.
fn is_transient<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    use aws_sdk_s3::error::SdkError;
    matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
        || http_status(e).is_some_and(|s| s >= 500 || s == 429)
}

/// A failed request as a [`StoreError`], noting in `transient` whether it may succeed if sent again.
fn fail<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    key: &str,
    e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    transient: &AtomicBool,
) -> StoreError {
    if is_transient(&e) {
        transient.store(true, Ordering::Relaxed);
    }
    err(op, key, DisplayErrorContext(e))
}

/// The HTTP status of a failed S3 request, when the server answered.
fn http_status<E>(e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Set when the future that started a blocking copy is dropped, so that the copy stops within a chunk.
#[derive(Default)]
struct StopOnDrop(std::sync::Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The local store's ETag of an object: its inode, size and modification time. Every write is a new file renamed
/// into place, so every write has a new ETag, as S3's do.
fn local_etag(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("\"{:x}-{:x}-{:x}.{:x}\"", m.ino(), m.len(), m.mtime(), m.mtime_nsec())
}

/// Whether two ETags are the same, quoted or not (S3 accepts either in a condition).
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// An exclusive `flock` of a folder, held until dropped.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> std::io::Result<DirLock> {
        use std::os::fd::AsRawFd;
        let f = File::open(dir)?;
        // SAFETY: flock on a descriptor we own; it is released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirLock { _file: f })
    }
}

/// The embedded stand-in for S3: objects are files under a local folder (`OUT/s3/<key>`).
pub struct LocalStore {
    root: PathBuf,
    /// Its copies' thread: each copy is one job there, which stops within a chunk once its sink is stopped.
    lane: Lane,
}

impl LocalStore {
    pub fn new(root: &Path) -> Self {
        LocalStore { root: root.to_path_buf(), lane: Lane::new("logcopy-local-s3") }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(err("path", key, "not a plain relative key"));
        }
        Ok(self.root.join(rel))
    }
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, file: File, len: u64) -> Result<PutStats, StoreError> {
        let rel = self.path(key)?.strip_prefix(&self.root).map(Path::to_path_buf).unwrap_or_default();
        let store = self.root.clone();
        // On the store's own thread, COPY_CHUNK at a time: the runtime's one thread never waits on the disk, and a
        // sink stopped when its flush budget is spent (this future dropped) stops the copy within one chunk.
        let stop = StopOnDrop::default();
        let stopped = stop.0.clone();
        let (_, done) = self
            .lane
            .run(file, move |file| {
                std::fs::create_dir_all(&store)?;
                let root = Root::open(&store)?;
                if let Some(dir) = rel.parent() {
                    root.create_dir_all(dir)?;
                }
                // Atomic, as the volume's writes are (a reader never sees half an object), but not synced: the
                // run's end lists the store and uploads again what is missing or of another size.
                root.write_atomic_unsynced(&rel, |out| {
                    file.seek(SeekFrom::Start(0))?;
                    let mut left = len;
                    while left > 0 {
                        if stopped.load(Ordering::Relaxed) {
                            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "the sink was stopped"));
                        }
                        let n = std::io::copy(&mut (&mut *file).take(left.min(COPY_CHUNK)), out)?;
                        if n == 0 {
                            break;
                        }
                        left -= n;
                    }
                    Ok(())
                })
                .map_err(|e| e.source)?;
                Ok(root.stat(&rel)?.as_ref().map(local_etag))
            })
            .await;
        drop(stop);
        let etag = done.map_err(|e: std::io::Error| err("put", key, e))?;
        Ok(PutStats { requests: 1, etag })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let prefix = prefix.trim_end_matches('/').to_string();
        let base = self.path(&prefix)?;
        // A walk and a stat of every object: blocking work, off the runtime's thread.
        let (_, listed) = self
            .lane
            .run((), move |_| {
                let Ok(root) = Root::open(&base) else { return Vec::new() };
                let (files, _) =
                    root.walk(&|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(TEMP_PREFIX)));
                files
                    .into_iter()
                    .filter_map(|f| {
                        let size = root.stat(&f.rel).ok()??.len();
                        Some(ObjectInfo { key: format!("{prefix}/{}", f.rel.to_str()?), size })
                    })
                    .collect()
            })
            .await;
        Ok(listed)
    }

    async fn put_bytes(&self, key: &str, body: Vec<u8>, cond: PutCondition) -> Result<PutOutcome, StoreError> {
        let rel = self.path(key)?.strip_prefix(&self.root).map(Path::to_path_buf).unwrap_or_default();
        let store = self.root.clone();
        let (_, done) = self
            .lane
            .run(body, move |body| -> std::io::Result<PutOutcome> {
                std::fs::create_dir_all(&store)?;
                // One writer at a time across processes (the check and the write are one step, as S3's are).
                let _lock = DirLock::exclusive(&store)?;
                let root = Root::open(&store)?;
                let now = root.stat(&rel)?.as_ref().map(local_etag);
                let holds = match (&cond, &now) {
                    (PutCondition::Always, _) | (PutCondition::IfAbsent, None) => true,
                    (PutCondition::IfMatch(want), Some(now)) => same_etag(want, now),
                    _ => false,
                };
                if !holds {
                    return Ok(PutOutcome::PreconditionFailed);
                }
                if let Some(dir) = rel.parent() {
                    root.create_dir_all(dir)?;
                }
                root.write_atomic_unsynced(&rel, |out| out.write_all(body)).map_err(|e| e.source)?;
                let etag = root.stat(&rel)?.as_ref().map(local_etag).unwrap_or_default();
                Ok(PutOutcome::Written { etag })
            })
            .await;
        done.map_err(|e| err("put", key, e))
    }

    async fn get_bytes(&self, key: &str, cond: GetCondition<'_>, max: u64) -> Result<GetOutcome, StoreError> {
        let mut file = match File::open(self.path(key)?) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GetOutcome::Missing),
            Err(e) => return Err(err("get", key, e)),
        };
        let meta = file.metadata().map_err(|e| err("get", key, e))?;
        let etag = local_etag(&meta);
        if cond.if_match.is_some_and(|want| !same_etag(want, &etag)) {
            return Ok(GetOutcome::Changed);
        }
        if cond.if_none_match.is_some_and(|seen| same_etag(seen, &etag)) {
            return Ok(GetOutcome::NotModified);
        }
        if meta.len() > max {
            return Err(err("get", key, format!("{} bytes, over the cap of {max}", meta.len())));
        }
        let mut body = Vec::with_capacity(meta.len() as usize);
        (&mut file).take(max + 1).read_to_end(&mut body).map_err(|e| err("get", key, e))?;
        if body.len() as u64 > max {
            return Err(err("get", key, format!("over the cap of {max} bytes")));
        }
        Ok(GetOutcome::Found { body, etag })
    }

    async fn get(&self, key: &str, mut dest: File) -> Result<u64, StoreError> {
        let mut src = File::open(self.path(key)?).map_err(|e| err("get", key, e))?;
        std::io::copy(&mut src, &mut dest).map_err(|e| err("get", key, e))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StoreError> {
        for k in keys {
            match std::fs::remove_file(self.path(k)?) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err("delete", k, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No file needs more than S3's 10,000 parts, and every part but the last is 5 MiB..5 GiB.
    #[test]
    fn part_size_keeps_every_upload_within_s3s_limits() {
        const GIB: u64 = 1 << 30;
        assert_eq!(part_size(MULTIPART_THRESHOLD), PART_SIZE);
        assert_eq!(part_size(PART_SIZE * MAX_PARTS), PART_SIZE, "8 MiB parts up to 78 GiB");
        assert_eq!(part_size(PART_SIZE * MAX_PARTS + 1), 9 << 20, "then the next whole MiB");
        for len in [MULTIPART_THRESHOLD, 5 * GIB, 80 * GIB + 1, 100 * GIB, 1000 * GIB + 7, 5 * 1024 * GIB, u64::MAX / 2]
        {
            let part = part_size(len);
            assert!((5 << 20..=MAX_PART_SIZE).contains(&part), "{len}: part {part}");
            if len <= MAX_PARTS * MAX_PART_SIZE {
                assert!(len.div_ceil(part) <= MAX_PARTS, "{len}: {} parts of {part}", len.div_ceil(part));
            }
        }
    }
}
