//! Free TCP ports on 127.0.0.1.

use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out in this process, so that two callers never get P and P+10 of each other.
static PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A free TCP port P with P+10 (CARLA's traffic manager's) free too: bound on 127.0.0.1:0, then released; never
/// the same as, or 10 away from, one handed out before in this process.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().expect("local_addr").port();
        if p > 65000 || TcpListener::bind(("127.0.0.1", p + 10)).is_err() {
            continue;
        }
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.iter().any(|u| u.abs_diff(p) == 0 || u.abs_diff(p) == 10) {
            continue;
        }
        used.push(p);
        return p;
    }
}
