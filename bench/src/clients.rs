//! The simulated clients, one per kind of workload: what one operation of each scenario is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::http::{Connection, request};
use crate::load::Client;

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

/// Fights the other clients for one shared lock with its own key: retries `PUT` at once on
/// 423 until granted, then unlocks. One operation is one grant.
pub struct Contender {
    conn: Connection,
    lock: Vec<u8>,
    unlock: Vec<u8>,
    /// 423 answers, summed over all contenders.
    refusals: Arc<AtomicU64>,
}

impl Contender {
    pub async fn connect(
        addr: SocketAddr,
        i: usize,
        refusals: Arc<AtomicU64>,
    ) -> anyhow::Result<Contender> {
        let body = claim(&format!("key-{i}"), &format!("client-{i}"));
        Ok(Contender {
            conn: Connection::connect(addr).await?,
            lock: request("PUT", "/lock/contended", Some(&body), false),
            unlock: request("DELETE", "/lock/contended", Some(&body), false),
            refusals,
        })
    }
}

impl Client for Contender {
    async fn run_once(&mut self) -> anyhow::Result<()> {
        loop {
            match self.conn.send(&self.lock).await? {
                200 => break,
                423 => {
                    self.refusals.fetch_add(1, Ordering::Relaxed);
                }
                other => expect(other, 200, "PUT", &self.conn)?,
            }
        }
        let status = self.conn.send(&self.unlock).await?;
        expect(status, 200, "DELETE", &self.conn)
    }
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
