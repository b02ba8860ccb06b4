//! The queue's scenarios (issue 12): how soon a freed lock reaches the next waiter (11), waiting
//! in the queue against retrying under contention (12), and what thousands of waiting requests
//! cost the server in memory (13).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Bench, CLIENTS, cpu_per, mb};
use crate::clients::{Asking, Contender, ContentionLog, LONG_POLL, token_of};
use crate::http::{Connection, request};
use crate::http2::Http2Connection;
use crate::load::{Outcome, Period, percentile};
use crate::order::{self, QueueSnapshot};
use crate::report::{Row, ms, thousands};
use crate::servers::{self, Locker};

/// Waiters queued behind the holder in the hand-over scenario.
const LINE: usize = 64;
/// How long after an unlock the next waiter's grant may take before the scenario gives up.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much earlier a client must have asked to count as overtaken (see [`order::overtaken`]).
const OVERTAKE_MARGIN: Duration = Duration::from_millis(1);
/// How often the contention scenario reads the lock's queue: often enough that each read's
/// queue (about 63 waiters) reaches the next read at any grant rate seen so far.
const QUEUE_READ_EVERY: Duration = Duration::from_millis(2);
/// Waiting requests in the memory scenario: as many as the server allows connections.
const WAITERS: usize = 4096;
/// The most of those requests one HTTP/2 connection carries (as streams); fewer if the server
/// allows fewer, so 16 connections or more.
const STREAMS_PER_CONNECTION: usize = 256;
/// How long the memory scenario lets its waiters be granted, one after another, once the
/// holders unlock; those still waiting then are let go by closing their connections.
const DRAIN_BUDGET: Duration = Duration::from_secs(15);
/// The server's default `LOCKER_QUEUE_GRACE`: how long it remembers a grant.
const QUEUE_GRACE: Duration = Duration::from_secs(30);

impl Bench {
    /// Scenario 11: a holder and 64 waiters, each on its own connection. In a loop the holder
    /// unlocks; the time from its unlock's answer to the next waiter's 200 is the hand-over.
    /// The new holder is next to unlock, and the old one queues again at the end. After every
    /// hand-over the server's queue is read and compared with the order the waiters joined in.
    pub(super) async fn hand_over(&mut self) -> anyhow::Result<()> {
        let running = self.locker(None, &self.settings.log_level.clone()).await?;
        let cpu_before = running.server.cpu_time()?;
        let run = hand_overs(running.server.addr, self.settings.period).await?;
        let cpu = running.server.cpu_time()? - cpu_before;
        running.server.stop()?;

        let outcome = &run.outcome;
        let mut row = Row::measured(
            "11",
            &format!("Hand-over to the next of {LINE} queued waiters (unlock's answer → its 200)"),
            outcome,
            "hand-overs/s",
        );
        let in_order = run.misgranted == 0 && run.misqueued == 0 && run.total > 0;
        row.comparison = format!(
            "{} of {} grants went to the first in the queue, and the queue read after each hand-over was in joining order {} times; the grant arrived before the unlock's answer in {} (counted as 0); unlock sent → grant p50 {} ms, p99 {} ms; hand-overs in the measured period's first / last second: {} / {}; server CPU {:.0} µs per hand-over (its unlock, the re-queue, {:.1} reads of the queue)",
            thousands((run.total - run.misgranted) as f64),
            thousands(run.total as f64),
            thousands((run.total - run.misqueued) as f64),
            thousands(run.early as f64),
            ms(percentile(&run.unlock_to_grant, 50.0)),
            ms(percentile(&run.unlock_to_grant, 99.0)),
            run.first_second,
            run.last_second,
            cpu.as_secs_f64() * 1e6 / run.total.max(1) as f64,
            run.reads as f64 / run.total.max(1) as f64,
        );
        row.judge(
            "p50 ≤ 1 ms, p99 ≤ 5 ms, queue order",
            outcome.percentile(50.0) <= Duration::from_millis(1)
                && outcome.percentile(99.0) <= Duration::from_millis(5)
                && in_order,
        );
        self.report.rows.push(row);
        if let Some(mismatch) = run.first_mismatch {
            self.report.notes.push(format!(
                "Scenario 11: {} grants out of queue order and {} queues out of joining order; the first: {mismatch}",
                run.misgranted, run.misqueued
            ));
        }
        Ok(())
    }

    /// Scenario 12: scenario 4's contention (64 keys, one lock) twice, on a fresh server each:
    /// retrying at once on 423, then waiting in the queue (`?wait=`). Every grant's token is
    /// kept, and a reader takes the lock's queue every few milliseconds, to judge the grant
    /// order (see [`order`]).
    pub(super) async fn queue_contention(&mut self) -> anyhow::Result<()> {
        let level = self.settings.log_level.clone();
        let period = self.settings.period;
        let total = period.warm_up + period.measured;
        let mut polling_rate = None;
        for asking in [Asking::AtOnce, Asking::LongPoll] {
            let running = self.locker(None, &level).await?;
            let addr = running.server.addr;
            let log = Arc::new(ContentionLog::keeping_grants());
            let stop = Arc::new(AtomicBool::new(false));
            let reader = read_queue_in_a_loop(addr, "contended", stop.clone());
            let (outcome, cpu) = self.measure_on(
                &running.server,
                "12",
                |i| Contender::connect(addr, i, asking, log.clone()),
                CLIENTS,
            )?;
            stop.store(true, Ordering::Relaxed);
            let snapshots = reader
                .join()
                .map_err(|_| anyhow::anyhow!("the queue reader panicked"))??;
            running.server.stop()?;

            let grants = log.grants();
            // The first request went out as the load generator started.
            let start = grants.iter().map(|g| g.asked).min();
            let (first, last) = start.map_or((0, 0), |start| {
                first_and_last_second(grants.iter().map(|g| g.granted), start, period)
            });
            let refusals = log.refusals.load(Ordering::Relaxed);
            let overtaken = order::overtaken(&grants, OVERTAKE_MARGIN);
            let refused_rate = refusals as f64 / total.as_secs_f64();
            let reads_rate = snapshots.len() as f64 / total.as_secs_f64();
            let min = outcome.per_client.iter().min().copied().unwrap_or(0);
            let max = outcome.per_client.iter().max().copied().unwrap_or(0);
            let common = format!(
                "grants in the measured period's first / last second: {first} / {last}; {} of {} grants went to a client while one that asked ≥ {} ms earlier waited (client clocks); grants per client {min}–{max}, Jain fairness {:.2}; server CPU {} µs/request, {} µs/grant ({} queue reads/s included)",
                thousands(overtaken as f64),
                thousands(grants.len() as f64),
                OVERTAKE_MARGIN.as_millis(),
                outcome.fairness(),
                cpu_per(
                    cpu,
                    2.0 * outcome.rate() + refused_rate + reads_rate,
                    period
                ),
                cpu_per(cpu, outcome.rate(), period),
                thousands(reads_rate),
            );
            match asking {
                Asking::AtOnce => {
                    let mut row = Row::measured(
                        "12",
                        "Contention, 64 keys, 1 lock: retry at once on 423 (as scenario 4)",
                        &outcome,
                        "grants/s",
                    );
                    row.comparison = format!(
                        "{} refusals (423)/s, {} in all; {common}",
                        thousands(refused_rate),
                        thousands(refusals as f64)
                    );
                    self.report.rows.push(row);
                    polling_rate = Some(outcome.rate());
                }
                Asking::LongPoll => {
                    let queue = order::check_against_queues(&grants, &snapshots);
                    let mut row = Row::measured(
                        "12",
                        &format!(
                            "Contention, 64 keys, 1 lock: wait in the queue (`?wait={LONG_POLL}`)"
                        ),
                        &outcome,
                        "grants/s",
                    );
                    let times =
                        polling_rate.map_or(0.0, |p| outcome.rate() / p.max(f64::MIN_POSITIVE));
                    row.comparison = format!(
                        "{times:.1} × the grants/s of retrying; {} refusals (423); queue order: {} of {} grants checked against {} reads of the server's queue, {} out of order; {common}",
                        thousands(refusals as f64),
                        thousands(queue.grants_checked as f64),
                        thousands(grants.len() as f64),
                        thousands(queue.snapshots_used as f64),
                        thousands(queue.out_of_order as f64),
                    );
                    row.judge(
                        "≥ 5 × retrying, no 423, queue order",
                        times >= 5.0
                            && refusals == 0
                            && queue.out_of_order == 0
                            && queue.grants_checked > 0,
                    );
                    self.report.rows.push(row);
                    if let Some(mismatch) = queue.first_mismatch {
                        self.report.notes.push(format!(
                            "Scenario 12: {} grants out of queue order; the first: {mismatch}",
                            queue.out_of_order
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Scenario 13: the server's resident memory idle, with 4,096 requests waiting, and once
    /// they are gone; once with all of them in one lock's queue (granted one after another
    /// when the holder unlocks), once with one waiter on each of 4,096 held locks (all
    /// unlocked at once). The requests travel as HTTP/2 streams over 16 connections (more if
    /// the server allows fewer than 256 streams on one). Then,
    /// after the grace for which the server remembers grants, a second round of 4,096 waiters
    /// on the first server shows whether the memory of the first is reused or lost.
    pub(super) async fn waiter_memory(&mut self) -> anyhow::Result<()> {
        let level = self.settings.log_level.clone();
        let one = self.locker(None, &level).await?;
        let crowded = crowd(&one.server, &["crowded".to_string()], Release::HandOver).await?;
        let many = self.locker(None, &level).await?;
        let names: Vec<String> = (0..WAITERS).map(|i| format!("crowd-{i:04}")).collect();
        let spread = crowd(&many.server, &names, Release::HandOver).await?;
        many.server.stop()?;
        // Grants are remembered for the grace: see what is left once it has passed.
        let after_grace = crowded.released_at + QUEUE_GRACE + Duration::from_secs(2);
        tokio::time::sleep_until(after_grace.into()).await;
        let forgotten = servers::rss(one.server.pid())?;
        let again = crowd(&one.server, &["crowded-again".to_string()], Release::Leave).await?;
        one.server.stop()?;

        let forgotten = format!(
            ", {:.1} MB once the {} s grace had passed",
            mb(forgotten),
            QUEUE_GRACE.as_secs()
        );
        let rows = [
            memory_row(&crowded, "in one lock's queue", &forgotten),
            memory_row(&spread, "in 4,096 held locks' queues, one each", ""),
            memory_row(
                &again,
                "in one lock's queue, a second round on the same server",
                "",
            ),
        ];
        self.report.rows.extend(rows);
        if crowded.max_streams == usize::MAX {
            self.report.notes.push(format!(
                "Scenario 13: the server sets no limit on concurrent HTTP/2 streams per connection, so its cap of 4,096 connections does not bound how many requests can wait ({} waited on {} connections).",
                thousands(WAITERS as f64),
                crowded.connections
            ));
        } else {
            self.report.notes.push(format!(
                "Scenario 13: the server allows {} concurrent HTTP/2 streams per connection, so the {} waiters took {} connections.",
                thousands(crowded.max_streams as f64),
                thousands(WAITERS as f64),
                crowded.connections
            ));
        }
        Ok(())
    }
}

/// The table row of one [`crowd`]; `after` says more about the memory once the waiters were
/// gone.
fn memory_row(crowd: &Crowd, what: &str, after: &str) -> Row {
    let mut row = Row::plain(
        "13",
        &format!(
            "Memory: {} waiting requests {what} (HTTP/2, {} connections)",
            thousands(WAITERS as f64),
            crowd.connections
        ),
    );
    row.clients = thousands(WAITERS as f64);
    let per_waiter = crowd.waiting.saturating_sub(crowd.idle) as f64 / WAITERS as f64;
    let released = match crowd.release {
        Release::Leave => "they left by closing their connections".to_string(),
        Release::HandOver => {
            row.rate = format!(
                "{} grants/s",
                thousands(crowd.granted as f64 / crowd.drained_in.as_secs_f64().max(1e-9))
            );
            let granted = if crowd.granted == WAITERS {
                format!(
                    "all were granted (and unlocked) in {} ms",
                    ms(crowd.drained_in)
                )
            } else {
                format!(
                    "only {} were granted (and unlocked) in the {} s allowed, the last after {} ms, and the others left by closing their connections",
                    thousands(crowd.granted as f64),
                    DRAIN_BUDGET.as_secs(),
                    ms(crowd.drained_in)
                )
            };
            format!(
                "once the holders unlocked, {granted} (server CPU {:.0} µs per grant, with its unlock)",
                crowd.drain_cpu.as_secs_f64() * 1e6 / crowd.granted.max(1) as f64
            )
        }
    };
    row.comparison = format!(
        "RSS {:.1} MB before the waiters, {:.1} MB with all waiting ({} bytes per waiter), {:.1} MB once they were gone{after}; peak {:.1} MB. Joining took {} ms (server CPU {:.0} µs per request); {released}",
        mb(crowd.idle),
        mb(crowd.waiting),
        thousands(per_waiter),
        mb(crowd.released),
        mb(crowd.peak),
        ms(crowd.joined_in),
        crowd.join_cpu.as_secs_f64() * 1e6 / WAITERS as f64,
    );
    row.target = "bounded (measured)".into();
    row
}

/// One client of the hand-over line: its connection and its requests.
struct Member {
    id: usize,
    conn: Connection,
    wait: Vec<u8>,
    unlock: Vec<u8>,
}

impl Member {
    async fn connect(addr: SocketAddr, id: usize) -> anyhow::Result<Member> {
        let body = locker_protocol::ClaimBody {
            key: &format!("key-{id}"),
            locked_by: &format!("client-{id}"),
        }
        .to_json();
        Ok(Member {
            id,
            conn: Connection::connect(addr).await?,
            wait: request(
                "PUT",
                &format!("/lock/hand-over?wait={LONG_POLL}"),
                Some(&body),
                false,
            ),
            unlock: request("DELETE", "/lock/hand-over", Some(&body), false),
        })
    }
}

/// The answer a waiting member got, and when it arrived.
struct Answered {
    member: Member,
    at: Instant,
    status: io::Result<u16>,
}

/// Sends the member's waiting lock request on a task of its own; the answer goes to `answers`.
fn line_up(mut member: Member, answers: &mpsc::UnboundedSender<Answered>) {
    let answers = answers.clone();
    tokio::spawn(async move {
        let status = member.conn.send(&member.wait).await;
        let at = Instant::now();
        let _ = answers.send(Answered { member, at, status });
    });
}

/// What the hand-over loop measured.
struct HandOvers {
    /// The hand-overs of the measured period: unlock's answer to the next waiter's 200.
    outcome: Outcome,
    /// Unlock sent to the next waiter's 200, in the measured period, sorted (ns).
    unlock_to_grant: Vec<u64>,
    /// Grants in the measured period that arrived before the unlock's answer did.
    early: u64,
    /// Hand-overs in all, warm-up included.
    total: u64,
    /// Grants to another than the first in the queue (or with a token that did not grow).
    misgranted: u64,
    /// Reads after a hand-over that found the queue in another order than the waiters joined in.
    misqueued: u64,
    first_mismatch: Option<String>,
    /// Reads of the queue, warm-up included.
    reads: u64,
    /// Hand-overs in the first and the last second of the measured period.
    first_second: usize,
    last_second: usize,
}

/// Runs the hand-over loop on `addr` for the warm-up and the measured period.
async fn hand_overs(addr: SocketAddr, period: Period) -> anyhow::Result<HandOvers> {
    let mut reader = Connection::connect(addr).await?;
    let read = request("GET", "/lock/hand-over", None, false);
    let (answers, mut granted) = mpsc::unbounded_channel();

    let mut holder = Member::connect(addr, 0).await?;
    let lock = request(
        "PUT",
        "/lock/hand-over",
        Some(
            &locker_protocol::ClaimBody {
                key: "key-0",
                locked_by: "client-0",
            }
            .to_json(),
        ),
        false,
    );
    let status = holder.conn.send(&lock).await?;
    if status != 200 {
        bail!("the first lock of hand-over answered {status}");
    }
    // The waiters join one after another, each seen in the queue before the next is sent.
    let mut line = VecDeque::new();
    let mut reads = 0;
    for id in 1..=LINE {
        line_up(Member::connect(addr, id).await?, &answers);
        line.push_back(id);
        reads += until_queued(&mut reader, &read, id, &line).await?.1;
    }

    let mut latencies = Vec::new();
    let mut unlock_to_grant = Vec::new();
    let mut grant_times = Vec::new();
    let mut per_client = vec![0; LINE + 1];
    let (mut early, mut total, mut misgranted, mut misqueued) = (0, 0, 0, 0);
    let mut first_mismatch = None;
    let mut last_token = 0;
    let start = Instant::now();
    let from = start + period.warm_up;
    let until = from + period.measured;
    loop {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let status = holder.conn.send(&holder.unlock).await?;
        let unlocked = Instant::now();
        if status != 200 {
            bail!(
                "client-{}'s unlock answered {status}: {}",
                holder.id,
                String::from_utf8_lossy(holder.conn.body())
            );
        }
        let Ok(next) = tokio::time::timeout(GRANT_TIMEOUT, granted.recv()).await else {
            bail!(
                "no waiter was granted within {GRANT_TIMEOUT:?} of client-{}'s unlock (hand-over {total}); the queue should have been {line:?}",
                holder.id
            );
        };
        let next = next.context("every waiting member's task ended")?;
        let status = next.status?;
        if status != 200 {
            bail!(
                "client-{}'s waiting lock answered {status}: {}",
                next.member.id,
                String::from_utf8_lossy(next.member.conn.body())
            );
        }
        let token = token_of(next.member.conn.body())?;
        let expected = line.pop_front();
        if expected != Some(next.member.id) || token <= last_token {
            misgranted += 1;
            first_mismatch.get_or_insert_with(|| {
                format!(
                    "hand-over {total} went to client-{} (token {token}, the one before {last_token}), while the first in the queue was {}",
                    next.member.id,
                    expected.map_or("nobody".to_string(), |id| format!("client-{id}"))
                )
            });
            line.retain(|&id| id != next.member.id);
        }
        last_token = token;
        total += 1;
        grant_times.push(next.at);
        if sent >= from && next.at <= until {
            if next.at < unlocked {
                early += 1;
            }
            latencies.push(next.at.saturating_duration_since(unlocked).as_nanos() as u64);
            unlock_to_grant.push((next.at - sent).as_nanos() as u64);
            per_client[next.member.id] += 1;
        }
        // The old holder queues again at the end.
        let old = holder.id;
        line_up(holder, &answers);
        line.push_back(old);
        let (seen, n) = until_queued(&mut reader, &read, old, &line).await?;
        reads += n;
        if seen != line {
            misqueued += 1;
            first_mismatch.get_or_insert_with(|| {
                format!(
                    "after hand-over {total} the server's queue was {seen:?}, where {line:?} was expected"
                )
            });
            line = seen;
        }
        holder = next.member;
    }
    latencies.sort_unstable();
    unlock_to_grant.sort_unstable();
    let (first_second, last_second) = first_and_last_second(grant_times.into_iter(), start, period);
    Ok(HandOvers {
        outcome: Outcome {
            clients: LINE + 1,
            count: latencies.len() as u64,
            measured: period.measured,
            latencies,
            per_client,
            errors: Vec::new(),
        },
        unlock_to_grant,
        early,
        total,
        misgranted,
        misqueued,
        first_mismatch,
        reads,
        first_second,
        last_second,
    })
}

/// Reads the queue until client `id` is in it (for at most [`GRANT_TIMEOUT`]); returns the
/// queue then and how many reads it took. `line` is only for the error message.
async fn until_queued(
    reader: &mut Connection,
    read: &[u8],
    id: usize,
    line: &VecDeque<usize>,
) -> anyhow::Result<(VecDeque<usize>, u64)> {
    let began = Instant::now();
    let mut reads = 0;
    loop {
        let snapshot = read_queue(reader, read).await?;
        reads += 1;
        if snapshot.waiters.contains(&id) {
            return Ok((snapshot.waiters.into(), reads));
        }
        if began.elapsed() > GRANT_TIMEOUT {
            bail!(
                "client-{id} did not show in the queue within {GRANT_TIMEOUT:?} of its waiting lock request; the queue was {:?}, {line:?} expected",
                snapshot.waiters
            );
        }
    }
}

/// The lock's tenure and its waiters (by client number) as `GET /lock/NAME` shows them.
async fn read_queue(conn: &mut Connection, read: &[u8]) -> anyhow::Result<QueueSnapshot> {
    let status = conn.send(read).await?;
    if status != 200 {
        bail!(
            "reading the lock answered {status}: {}",
            String::from_utf8_lossy(conn.body())
        );
    }
    let lock: locker_protocol::Lock = serde_json::from_slice(conn.body())?;
    Ok(QueueSnapshot {
        token: lock.token,
        waiters: lock
            .queue
            .iter()
            .map(|w| client_number(&w.requestor))
            .collect(),
    })
}

/// `N` of the requestor `client-N`; `usize::MAX` for anyone else.
fn client_number(requestor: &str) -> usize {
    requestor
        .strip_prefix("client-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// Reads the queue of the lock `name` every [`QUEUE_READ_EVERY`] until `stop`, on a thread of
/// its own (outside the load generator, whose clients are measured).
fn read_queue_in_a_loop(
    addr: SocketAddr,
    name: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<QueueSnapshot>>> {
    let read = request("GET", &format!("/lock/{name}"), None, false);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut conn = Connection::connect(addr).await?;
            let mut snapshots = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                snapshots.push(read_queue(&mut conn, &read).await?);
                tokio::time::sleep(QUEUE_READ_EVERY).await;
            }
            Ok(snapshots)
        })
    })
}

/// How [`crowd`] lets its waiters go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The holders unlock; each waiter unlocks as soon as it is granted. Those not granted
    /// within [`DRAIN_BUDGET`] leave by closing their connections.
    HandOver,
    /// The waiters leave by closing their connections; the holders keep their locks.
    Leave,
}

/// What [`crowd`] measured.
struct Crowd {
    release: Release,
    /// RSS with the locks held and nobody waiting.
    idle: u64,
    /// RSS with every request waiting.
    waiting: u64,
    /// RSS once every waiter was granted (and unlocked) or had left, and the connections were
    /// closed.
    released: u64,
    /// Peak RSS.
    peak: u64,
    joined_in: Duration,
    join_cpu: Duration,
    /// Waiters granted (and unlocked) within [`DRAIN_BUDGET`] of the holders' unlocks (none
    /// when they leave).
    granted: usize,
    /// From the holders' unlocks to the last of those grants' unlocks.
    drained_in: Duration,
    drain_cpu: Duration,
    /// When the last waiter was gone.
    released_at: Instant,
    /// The server's limit on concurrent streams per HTTP/2 connection.
    max_streams: usize,
    /// The HTTP/2 connections the waiters took.
    connections: usize,
}

/// Holds the locks `names`, sends [`WAITERS`] waiting lock requests spread evenly over them,
/// measures the server's memory once all wait, and lets them go as `release` says.
async fn crowd(server: &Locker, names: &[String], release: Release) -> anyhow::Result<Crowd> {
    let addr = server.addr;
    let pid = server.pid();
    let holder = |name: &str| {
        locker_protocol::ClaimBody {
            key: &format!("holder-{name}"),
            locked_by: "holder",
        }
        .to_json()
    };
    let mut control = Connection::connect(addr).await?;
    each_lock(addr, names, "PUT", holder).await?;
    let idle = servers::rss(pid)?;

    // The server's limit on streams comes with its settings, known once a first answer is in.
    let first = Http2Connection::connect(addr).await?;
    first.send("GET", "/healthz", None).await?;
    let max_streams = first.max_streams();
    let count = WAITERS.div_ceil(max_streams.min(STREAMS_PER_CONNECTION));
    let mut connections = vec![first];
    for _ in 1..count {
        connections.push(Http2Connection::connect(addr).await?);
    }
    let cpu = server.cpu_time()?;
    let began = Instant::now();
    let mut waiters = JoinSet::new();
    for i in 0..WAITERS {
        let conn = connections[i % count].clone();
        let name = names[i % names.len()].clone();
        waiters.spawn(async move {
            let body = locker_protocol::ClaimBody {
                key: &format!("key-{i}"),
                locked_by: &format!("client-{i}"),
            }
            .to_json();
            let path = format!("/lock/{name}");
            let wait = format!("{path}?wait={LONG_POLL}");
            let (status, answer) = conn.send("PUT", &wait, Some(&body)).await?;
            if status != 200 {
                bail!(
                    "client-{i}'s waiting lock of {name} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            let (status, answer) = conn.send("DELETE", &path, Some(&body)).await?;
            if status != 200 {
                bail!(
                    "client-{i}'s unlock of {name} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            Ok(())
        });
    }
    let queues = QueueReader::new(names);
    loop {
        let queued = queues.waiting(&mut control).await?;
        if queued == WAITERS {
            break;
        }
        if let Some(done) = waiters.try_join_next() {
            done??;
            bail!("a waiting request was answered before any lock was unlocked");
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!("only {queued} of {WAITERS} requests were in the queues after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined_in = began.elapsed();
    let join_cpu = server.cpu_time()? - cpu;
    let waiting = servers::rss(pid)?;

    let cpu = server.cpu_time()?;
    let began = Instant::now();
    let mut granted = 0;
    let mut drained_in = Duration::ZERO;
    if release == Release::HandOver {
        each_lock(addr, names, "DELETE", holder).await?;
        let budget = began + DRAIN_BUDGET;
        while let Ok(Some(done)) = tokio::time::timeout_at(budget.into(), waiters.join_next()).await
        {
            done??;
            granted += 1;
            drained_in = began.elapsed();
        }
    }
    let drain_cpu = server.cpu_time()? - cpu;
    // Whoever still waits leaves with its connection.
    waiters.shutdown().await;
    drop(connections);
    let began = Instant::now();
    while queues.waiting(&mut control).await? > 0 {
        if began.elapsed() > Duration::from_secs(10) {
            bail!("waiters were still queued 10 s after their connections closed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let released_at = Instant::now();
    // Give the server a moment to free what the connections held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Crowd {
        release,
        idle,
        waiting,
        released: servers::rss(pid)?,
        peak: servers::peak_rss(pid)?,
        joined_in,
        join_cpu,
        granted,
        drained_in,
        drain_cpu,
        released_at,
        max_streams,
        connections: count,
    })
}

/// Counts the requests waiting in the queues of some locks: `GET /lock/NAME` for one,
/// `GET /locks` for many.
struct QueueReader {
    one: bool,
    read: Vec<u8>,
}

impl QueueReader {
    fn new(names: &[String]) -> QueueReader {
        match names {
            [name] => QueueReader {
                one: true,
                read: request("GET", &format!("/lock/{name}"), None, false),
            },
            _ => QueueReader {
                one: false,
                read: request("GET", "/locks", None, false),
            },
        }
    }

    async fn waiting(&self, conn: &mut Connection) -> anyhow::Result<usize> {
        let status = conn.send(&self.read).await?;
        if status != 200 {
            bail!("reading the queues answered {status}");
        }
        Ok(if self.one {
            serde_json::from_slice::<locker_protocol::Lock>(conn.body())?
                .queue
                .len()
        } else {
            serde_json::from_slice::<HashMap<String, locker_protocol::Lock>>(conn.body())?
                .values()
                .map(|lock| lock.queue.len())
                .sum()
        })
    }
}

/// Sends `method` with the body `body(name)` for every lock in `names`, over a few keep-alive
/// connections at once; each must answer 200.
async fn each_lock(
    addr: SocketAddr,
    names: &[String],
    method: &'static str,
    body: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    const CONNECTIONS: usize = 16;
    let mut tasks = JoinSet::new();
    for first in 0..CONNECTIONS.min(names.len()) {
        let requests: Vec<(String, Vec<u8>)> = names
            .iter()
            .skip(first)
            .step_by(CONNECTIONS)
            .map(|name| {
                let path = format!("/lock/{name}");
                (
                    name.clone(),
                    request(method, &path, Some(&body(name)), false),
                )
            })
            .collect();
        tasks.spawn(async move {
            let mut conn = Connection::connect(addr).await?;
            for (name, request) in requests {
                let status = conn.send(&request).await?;
                if status != 200 {
                    bail!(
                        "{method} /lock/{name} answered {status}: {}",
                        String::from_utf8_lossy(conn.body())
                    );
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// How many of `times` fell in the first and in the last second of the measured period of a
/// run that started at `start`: a rate that drifts during the run shows here.
fn first_and_last_second(
    times: impl Iterator<Item = Instant>,
    start: Instant,
    period: Period,
) -> (usize, usize) {
    let from = start + period.warm_up;
    let until = from + period.measured;
    let second = Duration::from_secs(1);
    let (mut first, mut last) = (0, 0);
    for t in times {
        if t >= from && t < from + second {
            first += 1;
        }
        if t + second >= until && t < until {
            last += 1;
        }
    }
    (first, last)
}
