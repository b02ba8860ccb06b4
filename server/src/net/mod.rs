//! The network edge: listening, TLS, and limits on what a connection may cost.
//!
//! - [`connection`]: how long a request head may take, and how many connections may be open.
//! - [`tls`]: HTTPS with a configuration checked at start-up.
//! - [`peers`]: the open connections, for a waiting request to notice its client leaving.

pub(crate) mod connection;
pub(crate) mod peers;
pub(crate) mod tls;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use poem::listener::{Acceptor, Listener, TcpAcceptor, TcpListener};

/// Listens on every address of `port`, IPv6 and IPv4 (one dual-stack socket, as the original
/// Go server did), or on IPv4 alone where the host has no IPv6.
pub(crate) async fn bind(port: u16) -> io::Result<(TcpAcceptor, SocketAddr)> {
    let dual = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match TcpListener::bind(dual).into_acceptor().await {
        Ok(acceptor) => Ok((acceptor, dual)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(e)
        }
        Err(e) => {
            tracing::debug!(error = %e, "no IPv6 here; listening on IPv4 only");
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            Ok((TcpListener::bind(v4).into_acceptor().await?, v4))
        }
    }
}

/// The address an acceptor is bound to (with the port the system picked, for port 0).
pub(crate) fn local_addr(acceptor: &impl Acceptor, fallback: SocketAddr) -> SocketAddr {
    acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(fallback)
}
