//! A stand-in for a locker server: it answers each request as a test says (as an older server
//! did, or a queue at a chosen moment) and records what it was sent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What a stand-in server was sent.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path with its query (`/lock/env?wait=50s`).
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: Value,
}

impl Received {
    /// The `wait` the request asked for, if any.
    pub fn wait(&self) -> Option<Duration> {
        let (_, query) = self.path.split_once('?')?;
        let text = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("wait="))?;
        Some(humantime::parse_duration(text).expect("a wait the server can read"))
    }
}

/// How a stand-in answers one request: status and JSON body.
type Answer = dyn Fn(&Received) -> (u16, Value) + Send + Sync;

/// A one-request-per-connection HTTP server answering with a function of the request. Each
/// request is recorded when it arrives, before it is answered.
pub struct StandIn {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl StandIn {
    pub fn start(answer: impl Fn(&Received) -> (u16, Value) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let answer: Arc<Answer> = Arc::new(answer);
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (log, answer) = (log.clone(), answer.clone());
                thread::spawn(move || serve(stream, &*answer, &log));
            }
        });
        Self { url, received }
    }

    pub fn source(&self) -> Value {
        json!({"locker_uri": self.url, "lock_name": "env",
               "retry_delay": "50ms", "max_retry_delay": "200ms"})
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until a request with `method` arrived, failing the test after `limit`.
    pub fn wait_for(&self, method: &str, limit: Duration) -> Received {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(request) = self.received().into_iter().find(|r| r.method == method) {
                return request;
            }
            assert!(
                Instant::now() < deadline,
                "no {method} request within {limit:?}: {:?}",
                self.received()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve(stream: TcpStream, answer: &Answer, log: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut idempotency_key) = (0, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "idempotency-key" => idempotency_key = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let received = Received {
        method,
        path,
        idempotency_key,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    log.lock().unwrap().push(received.clone());
    let (status, answer) = answer(&received);
    let answer = answer.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
}
