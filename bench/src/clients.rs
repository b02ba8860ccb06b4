//! The simulated clients, one per kind of workload: what one operation of each scenario is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::http::{Connection, request};
use crate::load::Client;
use crate::order::Grant;

/// The JSON body of a lock or unlock request.
fn claim(key: &str, requestor: &str) -> String {
    locker_protocol::ClaimBody {
        key,
        locked_by: requestor,
    }
    .to_json()
}

fn expect(status: u16, wanted: u16, what: &str, conn: &Connection) -> anyhow::Result<()> {
    if status != wanted {
        bail!(
            "{what} answered {status}, expected {wanted}: {}",
            String::from_utf8_lossy(conn.body())
        );
    }
    Ok(())
}

/// `GET /healthz` on a keep-alive connection: the HTTP ceiling.
pub struct Health {
    conn: Connection,
    get: Vec<u8>,
}

impl Health {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Health> {
        Ok(Health {
            conn: Connection::connect(addr).await?,
            get: request("GET", "/healthz", None, false),
        })
    }
}

impl Client for Health {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        let status = self.conn.send(&self.get).await?;
        expect(status, 200, "GET /healthz", &self.conn)
    }
}

/// Locks and unlocks its own lock on a keep-alive connection: one durable cycle.
pub struct OwnLockCycle {
    conn: Connection,
    lock: Vec<u8>,
    unlock: Vec<u8>,
}

impl OwnLockCycle {
    /// Client `i` uses the lock `bench-i` with key `key-i`.
    pub async fn connect(addr: SocketAddr, i: usize) -> anyhow::Result<OwnLockCycle> {
        let (lock, unlock) = own_lock_requests(i, false);
        Ok(OwnLockCycle {
            conn: Connection::connect(addr).await?,
            lock,
            unlock,
        })
    }

    /// As [`OwnLockCycle::connect`], each lock with a lease of `ttl` (`"1h"`).
    pub async fn with_ttl(addr: SocketAddr, i: usize, ttl: &str) -> anyhow::Result<OwnLockCycle> {
        let (_, unlock) = own_lock_requests(i, false);
        let body = serde_json::json!({"key": format!("key-{i}"), "locked_by": format!("client-{i}"), "ttl": ttl});
        Ok(OwnLockCycle {
            conn: Connection::connect(addr).await?,
            lock: request(
                "PUT",
                &format!("/lock/bench-{i}"),
                Some(&body.to_string()),
                false,
            ),
            unlock,
        })
    }
}

impl Client for OwnLockCycle {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        let status = self.conn.send(&self.lock).await?;
        expect(status, 200, "PUT", &self.conn)?;
        let status = self.conn.send(&self.unlock).await?;
        expect(status, 200, "DELETE", &self.conn)
    }
}

/// The same cycle with a new connection per request, as the resource binaries do.
pub struct FreshConnectionCycle {
    addr: SocketAddr,
    lock: Vec<u8>,
    unlock: Vec<u8>,
}

impl FreshConnectionCycle {
    pub fn new(addr: SocketAddr, i: usize) -> FreshConnectionCycle {
        let (lock, unlock) = own_lock_requests(i, true);
        FreshConnectionCycle { addr, lock, unlock }
    }
}

/// The lock and unlock requests of client `i`, on lock `bench-i` with key `key-i`.
fn own_lock_requests(i: usize, close: bool) -> (Vec<u8>, Vec<u8>) {
    let path = format!("/lock/bench-{i}");
    let body = claim(&format!("key-{i}"), &format!("client-{i}"));
    (
        request("PUT", &path, Some(&body), close),
        request("DELETE", &path, Some(&body), close),
    )
}

impl Client for FreshConnectionCycle {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        let mut conn = Connection::connect(self.addr).await?;
        let status = conn.send(&self.lock).await?;
        expect(status, 200, "PUT", &conn)?;
        let mut conn = Connection::connect(self.addr).await?;
        let status = conn.send(&self.unlock).await?;
        expect(status, 200, "DELETE", &conn)
    }
}

/// How a contender asks again when the lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    /// A plain `PUT`, repeated at once on 423.
    AtOnce,
    /// `PUT ?wait=60s` (the server's default `LOCKER_MAX_WAIT`): waits in the lock's queue,
    /// and asks again only if the wait runs out (423).
    LongPoll,
}

/// How long a long-polling contender asks to wait.
pub const LONG_POLL: &str = "60s";

/// What the contenders of one run saw, shared among them.
#[derive(Debug, Default)]
pub struct ContentionLog {
    /// 423 answers.
    pub refusals: AtomicU64,
    /// Every grant, when kept.
    grants: Option<Mutex<Vec<Grant>>>,
}

impl ContentionLog {
    /// A log that also keeps every grant (reading its token from the answer).
    pub fn keeping_grants() -> ContentionLog {
        ContentionLog {
            refusals: AtomicU64::new(0),
            grants: Some(Mutex::new(Vec::with_capacity(64 * 1024))),
        }
    }

    /// The grants kept so far, in no particular order.
    pub fn grants(&self) -> Vec<Grant> {
        self.grants
            .as_ref()
            .map(|g| {
                g.lock()
                    .expect("no contender panics holding the log")
                    .clone()
            })
            .unwrap_or_default()
    }
}

/// Fights the other clients for one shared lock with its own key: asks until granted (at once
/// again on 423, or waiting in the queue), then unlocks. One operation is one grant.
pub struct Contender {
    client: usize,
    conn: Connection,
    lock: Vec<u8>,
    unlock: Vec<u8>,
    log: Arc<ContentionLog>,
}

impl Contender {
    /// Client `i` with key `key-i` and requestor `client-i`, on the lock `contended`.
    pub async fn connect(
        addr: SocketAddr,
        i: usize,
        asking: Asking,
        log: Arc<ContentionLog>,
    ) -> anyhow::Result<Contender> {
        let body = claim(&format!("key-{i}"), &format!("client-{i}"));
        let path = match asking {
            Asking::AtOnce => "/lock/contended".to_string(),
            Asking::LongPoll => format!("/lock/contended?wait={LONG_POLL}"),
        };
        Ok(Contender {
            client: i,
            conn: Connection::connect(addr).await?,
            lock: request("PUT", &path, Some(&body), false),
            unlock: request("DELETE", "/lock/contended", Some(&body), false),
            log,
        })
    }
}

impl Client for Contender {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        let asked = Instant::now();
        loop {
            match self.conn.send(&self.lock).await? {
                200 => break,
                423 => {
                    self.log.refusals.fetch_add(1, Ordering::Relaxed);
                }
                other => expect(other, 200, "PUT", &self.conn)?,
            }
        }
        if let Some(grants) = &self.log.grants {
            let granted = Instant::now();
            let token = token_of(self.conn.body())?;
            grants
                .lock()
                .expect("no contender panics holding the log")
                .push(Grant {
                    client: self.client,
                    token,
                    asked,
                    granted,
                });
        }
        let status = self.conn.send(&self.unlock).await?;
        expect(status, 200, "DELETE", &self.conn)
    }
}

/// The fencing token of the lock in a lock answer (`{"response": ..., "lock": LOCK}`).
pub fn token_of(body: &[u8]) -> anyhow::Result<u64> {
    let answer: serde_json::Value = serde_json::from_slice(body)?;
    answer["lock"]["token"].as_u64().with_context(|| {
        format!(
            "a grant's answer has no lock.token: {}",
            String::from_utf8_lossy(body)
        )
    })
}

/// Locks and unlocks its own lock in etcd through the gRPC gateway's lock API, holding a
/// lease granted once at the start.
pub struct EtcdLockCycle {
    conn: Connection,
    lock: Vec<u8>,
}

impl EtcdLockCycle {
    pub async fn connect(addr: SocketAddr, i: usize) -> anyhow::Result<EtcdLockCycle> {
        let mut conn = Connection::connect(addr).await?;
        let grant = request("POST", "/v3/lease/grant", Some(r#"{"TTL":600}"#), false);
        let status = conn.send(&grant).await?;
        expect(status, 200, "etcd lease grant", &conn)?;
        let lease: serde_json::Value = serde_json::from_slice(conn.body())?;
        let lease = lease["ID"]
            .as_str()
            .context("etcd's lease grant answer has no ID")?
            .to_string();
        let name = BASE64.encode(format!("bench-{i}"));
        let body = format!(r#"{{"name":"{name}","lease":"{lease}"}}"#);
        Ok(EtcdLockCycle {
            conn,
            lock: request("POST", "/v3/lock/lock", Some(&body), false),
        })
    }
}

impl Client for EtcdLockCycle {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        let status = self.conn.send(&self.lock).await?;
        expect(status, 200, "etcd lock", &self.conn)?;
        let answer: serde_json::Value = serde_json::from_slice(self.conn.body())?;
        let key = answer["key"]
            .as_str()
            .context("etcd's lock answer has no key")?;
        let unlock = request(
            "POST",
            "/v3/lock/unlock",
            Some(&format!(r#"{{"key":"{key}"}}"#)),
            false,
        );
        let status = self.conn.send(&unlock).await?;
        expect(status, 200, "etcd unlock", &self.conn)
    }
}
