//! Slow and idle clients: 1,000 idle connections and 100 slowloris clients (a header byte a
//! second) at once; a normal client is still answered within 100 ms p99, memory stays bounded,
//! and the server closes the slow connections once a request head has taken 10 s.
//!
//! Broken on purpose (tried): serving without `connection::Limited` (in `server.rs`) makes
//! `slowloris_and_idle_connections_do_not_starve_a_normal_client` fail with "the server still
//! holds slowloris connections after 12 s (100 of 100)".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use locker_testkit::{Client, Locker};

use crate::{body, long_tests};

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// True when the server has closed `stream` (a read sees EOF or a reset).
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0; 1024];
    let mut reader = stream;
    let closed = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn slowloris_and_idle_connections_do_not_starve_a_normal_client() {
    let (idle_count, slow_count) = if long_tests() {
        (3_000, 500)
    } else {
        (1_000, 100)
    };
    let server = Locker::start();
    let port = server.port();
    let client = Client::new();
    assert_eq!(client.get(&server.url("/locks")).0, 200);
    let rss_before = rss_kib(server.pid());

    let idle: Vec<TcpStream> = (0..idle_count)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect an idle client"))
        .collect();
    let mut slow: Vec<TcpStream> = (0..slow_count)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect a slow client"))
        .collect();
    let head = b"GET /locks HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".to_vec();

    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut sent = 0;
    let mut put_ok = 0;
    // Twelve seconds: past the 10 s head timeout, so the slow clients must have been cut.
    while started.elapsed() < Duration::from_secs(12) {
        let second = started.elapsed().as_secs() as usize;
        while sent <= second {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            for s in &mut slow {
                let _ = s.write_all(&[byte]);
            }
            sent += 1;
        }
        for _ in 0..10 {
            let t = Instant::now();
            let (status, _) = client.get(&server.url("/lock/normal"));
            latencies.push(t.elapsed());
            assert_eq!(status, 200);
        }
        let url = server.url("/lock/normal");
        if client.put(&url, &body("k", "r")).0 == 200
            && client.delete(&url, &body("k", "r")).0 == 200
        {
            put_ok += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_during = rss_kib(server.pid());

    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(
        p99 < Duration::from_millis(100),
        "p99 latency of a normal client was {p99:?} with {idle_count} idle and {slow_count} slow clients"
    );
    assert!(
        put_ok > 10,
        "changes kept working: {put_ok} lock/unlock pairs"
    );
    let growth_mib = rss_during.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 64,
        "memory grew by {growth_mib} MiB ({rss_before} KiB to {rss_during} KiB) for {} connections",
        idle_count + slow_count
    );
    let still_open = slow.iter().filter(|s| !closed_by_server(s)).count();
    assert_eq!(
        still_open, 0,
        "the server still holds slowloris connections after 12 s ({still_open} of {slow_count})"
    );
    let idle_open = idle.iter().filter(|s| !closed_by_server(s)).count();
    assert_eq!(
        idle_open, 0,
        "connections that never sent a request head are closed too"
    );
    assert_eq!(client.get(&server.url("/healthz")).0, 200);
}
