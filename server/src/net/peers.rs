//! Watching a connection for its client going away while a request waits.
//!
//! hyper, as poem runs it, does not read from an HTTP/1 connection while a request on it is
//! being handled, so a client that closes its connection during a long-poll goes unnoticed
//! until the answer is written into the void: a waiter that is gone would keep its place in a
//! queue, or be granted a lock nobody collects. [`PeerAcceptor`] records the socket of every
//! open TCP connection by peer address, and [`Peers::gone`] lets a waiting request watch its
//! own: it resolves when the peer has shut down its sending side (`EPOLLRDHUP`), whatever
//! bytes are still unread (a pipelined request, a TLS alert), and without reading any.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The sockets of the open connections, by peer address.
#[derive(Clone, Default)]
pub struct Peers(Arc<Mutex<HashMap<SocketAddr, RawFd>>>);

impl Peers {
    /// Resolves once the client at `peer` has closed its side of the connection (at once if no
    /// such connection is open); never, if the connection cannot be watched.
    pub async fn gone(&self, peer: SocketAddr) {
        let watched = {
            let open = self.0.lock().expect("the peer table is never poisoned");
            let Some(&fd) = open.get(&peer) else { return };
            // SAFETY: a connection's entry is removed before its socket is closed (see
            // `PeerStream`'s `Drop`), and both happen under this lock, so `fd` is open here.
            let socket = unsafe { BorrowedFd::borrow_raw(fd) };
            socket
                .try_clone_to_owned()
                .map(std::net::TcpStream::from)
                .and_then(TcpStream::from_std)
        };
        let Ok(watched) = watched else {
            return std::future::pending().await;
        };
        loop {
            match watched.ready(Interest::READABLE).await {
                Ok(ready) if ready.is_read_closed() => return,
                Ok(_) => {
                    // Bytes to read that are not ours to take: wait for the next change.
                    let _ = watched.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                Err(_) => return std::future::pending().await,
            }
        }
    }

    fn open(&self, peer: SocketAddr, fd: RawFd) {
        let mut open = self.0.lock().expect("the peer table is never poisoned");
        open.insert(peer, fd);
    }

    fn close(&self, peer: SocketAddr, fd: RawFd) {
        let mut open = self.0.lock().expect("the peer table is never poisoned");
        if open.get(&peer) == Some(&fd) {
            open.remove(&peer);
        }
    }
}

/// A TCP acceptor whose connections are recorded in [`Peers`].
pub struct PeerAcceptor<A> {
    inner: A,
    peers: Peers,
}

impl<A> PeerAcceptor<A> {
    pub fn new(inner: A, peers: Peers) -> Self {
        PeerAcceptor { inner, peers }
    }
}

impl<A: Acceptor<Io = TcpStream>> Acceptor for PeerAcceptor<A> {
    type Io = PeerStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, scheme) = self.inner.accept().await?;
        // Answers are small and often two follow each other on one connection (an unlock's
        // answer and, on an HTTP/2 connection, a waiter's grant): without this the second
        // waits for the client's delayed ACK, 40 ms on Linux (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
        let peer = remote.as_socket_addr().copied();
        if let Some(peer) = peer {
            self.peers.open(peer, stream.as_raw_fd());
        }
        let stream = PeerStream {
            inner: stream,
            peers: self.peers.clone(),
            peer,
        };
        Ok((stream, local, remote, scheme))
    }
}

/// A recorded connection; its record goes with it.
pub struct PeerStream {
    inner: TcpStream,
    peers: Peers,
    peer: Option<SocketAddr>,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            self.peers.close(peer, self.inner.as_raw_fd());
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
