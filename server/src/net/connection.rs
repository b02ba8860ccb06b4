//! Connection limits: how long a request head may take, and how many connections may be open.
//!
//! hyper, as poem runs it, lets a client take forever over a request head, and poem's idle
//! timeout only fires after a silence, so a client sending one byte a second (slowloris) holds
//! a connection, its buffers and a task for ever. [`Limited`] wraps the acceptor (after TLS,
//! so it sees plain HTTP) and gives every connection a [`HeadDeadline`]: a request head must be
//! complete within [`HEAD_TIMEOUT`] of its first byte (of the connection being opened, for the
//! first one), or reads fail and hyper closes the connection. Request bodies have their own
//! limit in the HTTP layer, where a late body can still be answered with 408.
//!
//! HTTP/2 has no request heads to time: its frames never contain the `\r\n\r\n` that ends an
//! HTTP/1 head, and a request may stay open (a long-poll) while other frames flow. A
//! connection that opens with the HTTP/2 preface (prior knowledge, or after TLS chose `h2`)
//! is left to hyper's HTTP/2 handling once the preface is in; the preface itself must arrive
//! within the head timeout.
//!
//! The acceptor also caps the number of open connections, so memory stays bounded however
//! many sockets a client opens: past the cap, new connections are closed at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a client may take to send a request head, from its first byte (or, for the first
/// request, from connecting).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// An acceptor whose connections have a [`HeadDeadline`] and whose number is capped.
pub struct Limited<A> {
    inner: A,
    head_timeout: Duration,
    max_connections: usize,
    open: Arc<AtomicUsize>,
}

impl<A: Acceptor> Limited<A> {
    pub fn new(inner: A, head_timeout: Duration, max_connections: usize) -> Self {
        Limited {
            inner,
            head_timeout,
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<A: Acceptor> Acceptor for Limited<A> {
    type Io = HeadDeadline<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        loop {
            let (io, local, remote, scheme) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: poem retries at once, so pause
                    // instead of spinning, and let open connections finish meanwhile.
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.open.load(Ordering::Relaxed) >= self.max_connections {
                tracing::warn!(
                    "closing a connection from {remote}: {} connections are open already",
                    self.max_connections
                );
                drop(io);
                continue;
            }
            let io = HeadDeadline::new(io, self.head_timeout, Slot::take(&self.open));
            return Ok((io, local, remote, scheme));
        }
    }
}

/// One counted open connection; released on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::Relaxed);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes an HTTP/2 connection opens with (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where a connection is in the request/response cycle, as far as its bytes tell.
enum Phase {
    /// The connection opened with the HTTP/2 preface: no head deadline any more.
    Http2,
    /// A request head is on its way; it must end (`\r\n\r\n`) before the deadline.
    Head,
    /// The head is complete: the body and the handler have their own limits.
    AfterHead,
    /// A response was written and nothing has been read since: poem's idle timeout applies.
    Idle,
}

/// A connection whose reads fail once a request head has taken longer than its timeout.
pub struct HeadDeadline<T> {
    inner: T,
    timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    /// The last bytes read, to find a `\r\n\r\n` split across reads.
    tail: [u8; 3],
    /// How much of the HTTP/2 preface the connection's first bytes have matched; `None` once
    /// they differ from it.
    preface_matched: Option<usize>,
    _slot: Slot,
}

impl<T> HeadDeadline<T> {
    fn new(inner: T, timeout: Duration, slot: Slot) -> Self {
        HeadDeadline {
            inner,
            timeout,
            phase: Phase::Head,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            tail: [0; 3],
            preface_matched: Some(0),
            _slot: slot,
        }
    }

    /// Looks at bytes just read: they may start a head or complete one.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(matched) = self.preface_matched {
            let n = bytes.len().min(HTTP2_PREFACE.len() - matched);
            if bytes[..n] == HTTP2_PREFACE[matched..matched + n] {
                if matched + n == HTTP2_PREFACE.len() {
                    self.preface_matched = None;
                    self.phase = Phase::Http2;
                    return;
                }
                self.preface_matched = Some(matched + n);
            } else {
                self.preface_matched = None;
            }
        }
        if let Phase::Http2 = self.phase {
            return;
        }
        if let Phase::Idle = self.phase {
            self.phase = Phase::Head;
            self.tail = [0; 3];
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        if let Phase::Head = self.phase {
            // The end may straddle the last read and this one: look at the seam (the kept
            // tail and this read's first three bytes), then at this read alone.
            let mut seam = [0; 6];
            let start = bytes.len().min(3);
            seam[..3].copy_from_slice(&self.tail);
            seam[3..3 + start].copy_from_slice(&bytes[..start]);
            let ended = seam[..3 + start].windows(4).any(|w| w == b"\r\n\r\n")
                || bytes.windows(4).any(|w| w == b"\r\n\r\n");
            if ended {
                self.phase = Phase::AfterHead;
            }
            // Keep the last three bytes of everything seen so far.
            let seen = &seam[..3 + start];
            if bytes.len() >= 3 {
                self.tail.copy_from_slice(&bytes[bytes.len() - 3..]);
            } else {
                self.tail.copy_from_slice(&seen[seen.len() - 3..]);
            }
        }
    }
}

impl<T> HeadDeadline<T> {
    /// A response is being written: the next bytes read start a new head (HTTP/1).
    fn wrote(&mut self, n: usize) {
        if n > 0 && !matches!(self.phase, Phase::Http2) {
            self.phase = Phase::Idle;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Phase::Head = this.phase
            && this.deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "request head not complete after {}s; closing the connection",
                    this.timeout.as_secs()
                ),
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(n);
        }
        polled
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn limited<T>(io: T, timeout: Duration) -> HeadDeadline<T> {
        HeadDeadline::new(io, timeout, Slot::take(&Arc::new(AtomicUsize::new(0))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_fails_the_read() {
        let (mut client, server) = duplex(1024);
        let mut server = limited(server, Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0; 1024];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_has_no_head_deadline_once_its_preface_is_in() {
        let (mut client, server) = duplex(1024);
        let mut server = limited(server, Duration::from_secs(10));
        let mut buf = [0; 1024];
        // The preface arrives split across reads, as it may.
        client.write_all(&HTTP2_PREFACE[..5]).await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        client.write_all(&HTTP2_PREFACE[5..]).await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        server.write_all(b"settings").await.unwrap();
        client.write_all(b"headers frame").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"data").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 4, "still open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_only_starts_like_the_http2_preface_keeps_its_deadline() {
        let (mut client, server) = duplex(1024);
        let mut server = limited(server, Duration::from_secs(10));
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0; 1024];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn the_end_of_a_head_is_found_however_the_reads_split_it() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for first in 0..=head.len() {
            for second in first..=head.len() {
                let (_client, server) = duplex(8);
                let mut conn = limited(server, Duration::from_secs(10));
                for (start, end) in [(0, first), (first, second), (second, head.len())] {
                    conn.saw(&head[start..end]);
                    assert_eq!(
                        matches!(conn.phase, Phase::AfterHead),
                        end == head.len(),
                        "after {end} of {} bytes, read split at {first} and {second}",
                        head.len()
                    );
                }
            }
        }
        let (_client, server) = duplex(8);
        let mut conn = limited(server, Duration::from_secs(10));
        for byte in head {
            conn.saw(std::slice::from_ref(byte));
        }
        assert!(
            matches!(conn.phase, Phase::AfterHead),
            "the end of the head was missed when read a byte at a time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_lifts_the_deadline_until_the_next_request() {
        let (mut client, server) = duplex(1024);
        let mut server = limited(server, Duration::from_secs(10));
        let mut buf = [0; 1024];
        // The end of the head arrives split across two reads.
        client.write_all(b"GET / HTTP/1.1\r\n\r").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        client.write_all(b"\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"body").await.unwrap();
        assert_eq!(
            server.read(&mut buf).await.unwrap(),
            4,
            "no deadline after the head"
        );
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"G").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::TimedOut,
            "a new head has a deadline"
        );
    }
}
