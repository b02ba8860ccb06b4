//! `locker healthcheck`: a probe for container runtimes that have no curl.
//!
//! Over plain HTTP it sends `GET /healthz` to the local server and expects 200. With TLS
//! configured it only checks that the port accepts connections, since checking the
//! certificate of `127.0.0.1` would fail for any real certificate.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Probes the server described by `config` on loopback.
pub fn probe(config: &Config) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    if config.tls.is_some() {
        return Ok(());
    }
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        })
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "{addr} answered {:?}",
            String::from_utf8_lossy(&head)
        ))
    }
}
