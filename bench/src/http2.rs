//! A minimal HTTP/2 client (prior knowledge, as over `h2c`) that keeps many requests open at
//! once on few connections: the server caps connections (4,096), so thousands of waiting
//! requests from one machine travel as streams.
//!
//! Not used where throughput is measured: each request here allocates its head, and that is
//! fine for the waiting requests it is for.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;

/// One HTTP/2 connection; clones share it, each sending its own requests (streams).
#[derive(Clone)]
pub struct Http2Connection {
    send: SendRequest<Bytes>,
    authority: String,
}

impl Http2Connection {
    /// Connects to `addr` and performs the HTTP/2 handshake; the connection is driven by a
    /// task of its own until every clone is dropped.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Http2Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) = h2::client::handshake(tcp)
            .await
            .context("HTTP/2 handshake (prior knowledge)")?;
        tokio::spawn(async move {
            // A connection error surfaces in the requests on it.
            let _ = connection.await;
        });
        Ok(Http2Connection {
            send,
            authority: addr.to_string(),
        })
    }

    /// How many streams the server lets this connection open at once (`usize::MAX` when it
    /// sets no limit); known once the server's settings have arrived (after a first answer).
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }

    /// Sends one request and reads its whole answer: the status and the body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.start(method, path, body).await?.await
    }

    /// Sends one request (its head and body are handed to the connection) and returns the
    /// future of its whole answer, without waiting for it: a burst sends every request before
    /// it reads any answer.
    pub async fn start(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<impl Future<Output = anyhow::Result<(u16, Vec<u8>)>> + use<>> {
        let mut send = self.send.clone().ready().await?;
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/json")
            .body(())?;
        let (response, mut stream) = send.send_request(request, body.is_none())?;
        if let Some(body) = body {
            stream.send_data(Bytes::copy_from_slice(body.as_bytes()), true)?;
        }
        Ok(answer(response))
    }
}

/// Reads the whole answer of a request sent with [`Http2Connection::start`].
async fn answer(response: h2::client::ResponseFuture) -> anyhow::Result<(u16, Vec<u8>)> {
    let response = response.await?;
    let status = response.status().as_u16();
    let mut data = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = data.data().await {
        let chunk = chunk?;
        let _ = data.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok((status, out))
}
