//! A minimal HTTP/1.1 client over a tokio `TcpStream`: one request at a time on a keep-alive
//! connection, requests prepared once as bytes, the response body kept in a reused buffer.
//!
//! Hand-written rather than hyper's client because the generator must not be the bottleneck:
//! per request this does one `write` and usually one `read`, and allocates nothing.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most headers a response may carry.
const MAX_HEADERS: usize = 32;

/// Builds the bytes of one request. `close` asks the server to close the connection after it.
pub fn request(method: &str, path: &str, body: Option<&str>, close: bool) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if close {
        out.push_str("Connection: close\r\n");
    }
    match body {
        Some(body) => {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        None => out.push_str("\r\n"),
    }
    out.into_bytes()
}

/// One client connection.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The last response's body (decoded if it was chunked).
    body: Vec<u8>,
    /// Whether the server said it would close the connection after the last response.
    closing: bool,
}

impl Connection {
    /// Connects to `addr` with Nagle's algorithm off (requests are small and latency-bound).
    pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            body: Vec::with_capacity(1024),
            closing: false,
        })
    }

    /// Sends one prepared request and reads its response; returns the status code.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.closing {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed this connection after its last response",
            ));
        }
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        let (status, header_len, framing) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf).map_err(invalid)? {
                httparse::Status::Complete(len) => {
                    let status = response.code.unwrap_or(0);
                    let mut framing = Framing::UntilClose;
                    self.closing = false;
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .ok_or_else(|| invalid("bad Content-Length"))?;
                            framing = Framing::Length(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                        {
                            self.closing = true;
                        }
                    }
                    break (status, len, framing);
                }
                httparse::Status::Partial => self.fill().await?,
            }
        };
        self.buf.drain(..header_len);
        self.body.clear();
        match framing {
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.body.extend_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
            }
            Framing::Chunked => self.read_chunks().await?,
            Framing::UntilClose => {
                self.closing = true;
                loop {
                    match self.fill().await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                self.body.append(&mut self.buf);
            }
        }
        Ok(status)
    }

    async fn read_chunks(&mut self) -> io::Result<()> {
        loop {
            let (size_len, size) = loop {
                match httparse::parse_chunk_size(&self.buf)
                    .map_err(|_| invalid("bad chunk size"))?
                {
                    httparse::Status::Complete((len, size)) => break (len, size as usize),
                    httparse::Status::Partial => self.fill().await?,
                }
            };
            // The chunk's data, then CRLF.
            while self.buf.len() < size_len + size + 2 {
                self.fill().await?;
            }
            self.body
                .extend_from_slice(&self.buf[size_len..size_len + size]);
            self.buf.drain(..size_len + size + 2);
            if size == 0 {
                // No trailers are expected; the final CRLF was consumed above.
                return Ok(());
            }
        }
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    async fn fill(&mut self) -> io::Result<()> {
        // Reading into the vector's spare capacity leaves nothing to zero or copy.
        self.buf.reserve(16 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection mid-response",
            ));
        }
        Ok(())
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for _ in 0..2 {
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(reply).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_content_length_responses_twice_on_one_connection() {
        let addr = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        let mut conn = Connection::connect(addr).await.unwrap();
        let req = request("GET", "/x", None, false);
        for _ in 0..2 {
            assert_eq!(conn.send(&req).await.unwrap(), 200);
            assert_eq!(conn.body(), b"hello");
        }
    }

    #[tokio::test]
    async fn decodes_chunked_bodies() {
        let addr = serve_once(
            b"HTTP/1.1 423 Locked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let mut conn = Connection::connect(addr).await.unwrap();
        let req = request("PUT", "/x", Some("{}"), false);
        for _ in 0..2 {
            assert_eq!(conn.send(&req).await.unwrap(), 423);
            assert_eq!(conn.body(), b"abcde");
        }
    }

    #[test]
    fn requests_carry_their_body_length() {
        let req = request("PUT", "/lock/a", Some(r#"{"key":"k"}"#), true);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("PUT /lock/a HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(
            text.ends_with("Content-Length: 11\r\n\r\n{\"key\":\"k\"}"),
            "{text}"
        );
    }
}
