//! Reliability and security suite (issue 6): each test starts the real `locker` binary and
//! attacks one promise: crashes, disk faults, corrupt files, hostile and slow clients,
//! authentication, and the resource's `out` under faults. See README.md in this folder.

mod auth;
mod compaction;
mod corrupt_files;
mod crash;
mod disk_faults;
mod exclusion;
mod faulty_disk;
mod history;
mod hostile;
mod resource_faults;
mod slow_clients;
mod truncation;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// True when the longer variants should run (`LOCKER_LONG_TESTS=1`).
pub fn long_tests() -> bool {
    std::env::var("LOCKER_LONG_TESTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The JSON body of a lock/unlock request.
pub fn body(key: &str, requestor: &str) -> String {
    locker_protocol::ClaimBody {
        key,
        locked_by: requestor,
    }
    .to_json()
}

/// Percent-encodes a lock name for a URL path segment.
pub use locker_protocol::names::encode_segment as encode;

/// Sends raw bytes to the server and reads until it closes the connection or `timeout`
/// passes; returns what was read.
pub fn raw_exchange(port: u16, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    let _ = stream.write_all(request);
    let mut out = Vec::new();
    let mut buf = [0; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP response, 0 when there is none.
pub fn raw_status(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The body of a raw HTTP/1.1 response (after the head).
pub fn raw_body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The threads of process `pid` named `name` (the kernel keeps 15 bytes of a name), each
/// with its nice value.
pub fn threads_named(pid: u32, name: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // After the command's closing parenthesis come the fields from the 3rd (state) on;
            // the 19th is the nice value.
            let fields = &stat[stat.rfind(')')? + 1..];
            fields.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}
