//! Writing answers: the API's JSON (the LOCK object, lock and unlock answers, errors), in
//! the original server's shapes. The API owns this JSON; storage has its own form.

use std::sync::Arc;

use poem::Response;
use poem::http::StatusCode;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::json;

use locker_protocol::timestamp;

use crate::concourse::Seen;
use crate::domain::{
    Claim, Decision, Entry, Hold, Holder, Holders, Lock, LockTable, Place, Queue, Verdict,
};

/// A refused request: the status and the message of its JSON error body.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn bad_request(message: String) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn into_response(self) -> Response {
        error_response(self.0, &self.1)
    }
}

/// The answer to a lock or unlock, in the original server's shape.
pub(super) fn decision_response(name: &str, claim: &Claim, decision: &Decision) -> Response {
    let lock = &decision.lock;
    let (status, field, message) = match decision.verdict {
        Verdict::Acquired => (
            StatusCode::OK,
            "response",
            format!(
                "Lock for '{name}' acquired by '{}' using key '{}'",
                claim.requestor, claim.key
            ),
        ),
        Verdict::Released => (
            StatusCode::OK,
            "response",
            format!(
                "Lock for '{name}' released by '{}' using key '{}'",
                claim.requestor, claim.key
            ),
        ),
        Verdict::NotHeld => (
            StatusCode::OK,
            "response",
            format!("Lock for '{name}' is not held; nothing to release"),
        ),
        Verdict::NoClaim => (
            StatusCode::OK,
            "response",
            format!(
                "'{}' holds no claim on lock '{name}' with key '{}'; nothing to release",
                claim.requestor, claim.key
            ),
        ),
        Verdict::Renewed => (
            StatusCode::OK,
            "response",
            format!(
                "Lock for '{name}' renewed by '{}' using key '{}' until {}",
                claim.requestor,
                claim.key,
                lock.locked_by
                    .holder(&claim.requestor)
                    .and_then(|h| h.expires_at)
                    .map_or_else(|| "further notice".to_string(), locker_protocol::timestamp)
            ),
        ),
        Verdict::NotHolding => (
            StatusCode::CONFLICT,
            "error",
            format!(
                "'{}' holds no claim on lock '{name}' with key '{}' to renew: it expired or was never taken; lock it again",
                claim.requestor, claim.key
            ),
        ),
        Verdict::HeldByOther => (
            StatusCode::LOCKED,
            "error",
            format!(
                "Lock for '{name}' is held by {} using key '{}', not '{}'",
                holders(lock),
                lock.key,
                claim.key
            ),
        ),
        Verdict::OthersWaiting => (
            StatusCode::LOCKED,
            "error",
            format!(
                "Lock for '{name}' is held by {} using key '{}', but requests with another key wait for it first; wait in its queue (?wait=) to be served in turn",
                holders(lock),
                lock.key
            ),
        ),
        Verdict::Queued => {
            let place = decision.place.unwrap_or(Place {
                position: 0,
                length: 0,
            });
            (
                StatusCode::LOCKED,
                "error",
                format!(
                    "Lock for '{name}' is held by {} using key '{}'; still waiting at position {} of {} in its queue",
                    holders(lock),
                    lock.key,
                    place.position,
                    place.length
                ),
            )
        }
        Verdict::Withdrawn => (
            StatusCode::CONFLICT,
            "error",
            format!("the place of this request in the queue of '{name}' was withdrawn"),
        ),
        Verdict::NotQueued => (
            StatusCode::OK,
            "response",
            format!("nothing waits in the queue of '{name}' for this request"),
        ),
    };
    json_response(
        status,
        &ChangeAnswer {
            field,
            message: &message,
            lock,
            place: decision
                .place
                .filter(|_| decision.verdict == Verdict::Queued),
        },
    )
}

/// A page of history, newest first: the entries of `lock` (or of every lock) with ids below
/// the page's `before`, at most its `limit`.
pub(super) fn history_response(
    table: &LockTable,
    lock: Option<&str>,
    page: super::body::HistoryPage,
) -> Response {
    let entries: Vec<EntryJson<'_>> = table
        .history()
        .iter()
        .rev()
        .filter(|e| page.before.is_none_or(|before| e.id < before))
        .filter(|e| lock.is_none_or(|name| e.lock == name))
        .take(page.limit)
        .map(|e| EntryJson(e))
        .collect();
    json_response(StatusCode::OK, &entries)
}

/// One history entry as the API writes it.
struct EntryJson<'a>(&'a Entry);

impl Serialize for EntryJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(Some(11))?;
        map.serialize_entry("id", &e.id)?;
        map.serialize_entry("time", &timestamp(e.at))?;
        map.serialize_entry("lock", &e.lock)?;
        map.serialize_entry("op", e.action.as_str())?;
        map.serialize_entry("requestor", &e.requestor)?;
        map.serialize_entry("key", &e.key)?;
        map.serialize_entry("owner", &e.owner)?;
        map.serialize_entry("token", &e.token)?;
        map.serialize_entry("revision", &e.revision)?;
        map.serialize_entry("reason", &e.reason)?;
        map.serialize_entry("client", &e.client)?;
        map.end()
    }
}

/// The answer to a force-release: 200 with the lock as it stands afterwards.
pub(super) fn force_release_response(
    name: &str,
    by: &str,
    reason: &str,
    decision: &Decision,
) -> Response {
    let message = match decision.verdict {
        Verdict::Released => {
            format!("Lock for '{name}' force-released by '{by}': {reason}")
        }
        _ => format!("Lock for '{name}' is not held; nothing to force-release"),
    };
    json_response(
        StatusCode::OK,
        &ChangeAnswer {
            field: "response",
            message: &message,
            lock: &decision.lock,
            place: None,
        },
    )
}

/// The answer to `DELETE /lock/{name}/queue/{id}`: 200 whatever there was to withdraw.
pub(super) fn withdrawal_response(name: &str, id: &str, decision: &Decision) -> Response {
    let message = match decision.verdict {
        Verdict::Withdrawn => format!("withdrew request '{id}' from the queue of '{name}'"),
        Verdict::Released => {
            format!("request '{id}' had been granted lock '{name}'; its claim was released")
        }
        _ => format!("no request '{id}' waits for '{name}'; nothing to withdraw"),
    };
    json_response(
        StatusCode::OK,
        &ChangeAnswer {
            field: "response",
            message: &message,
            lock: &decision.lock,
            place: None,
        },
    )
}

/// The body of a lock or unlock answer, `{FIELD: MESSAGE, "lock": LOCK}` (and, for a request
/// still waiting in a queue, `"queue": {"position": P, "length": L}`), written straight to
/// bytes (no intermediate `serde_json::Value`: this is the hot path).
struct ChangeAnswer<'a> {
    field: &'static str,
    message: &'a str,
    lock: &'a Lock,
    place: Option<Place>,
}

impl Serialize for ChangeAnswer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2 + usize::from(self.place.is_some())))?;
        map.serialize_entry(self.field, self.message)?;
        map.serialize_entry("lock", &LockJson(self.lock, None))?;
        if let Some(place) = self.place {
            map.serialize_entry(
                "queue",
                &json!({"position": place.position, "length": place.length}),
            )?;
        }
        map.end()
    }
}

/// The holders of a lock for a message: `'a' (2), 'main/deploy #42 (https://...)'`, each
/// named by its build when its owner says which, else by its requestor.
fn holders(lock: &Lock) -> String {
    lock.locked_by
        .entries()
        .iter()
        .map(|h| {
            let owner = |field: &str| h.owner.get(field).map(String::as_str);
            let mut name = match (owner("pipeline"), owner("job"), owner("build")) {
                (Some(pipeline), Some(job), Some(build)) => format!("{pipeline}/{job} #{build}"),
                _ => h.requestor.clone(),
            };
            if let Some(url) = owner("build_url") {
                name = format!("{name} ({url})");
            }
            if h.count == 1 {
                format!("'{name}'")
            } else {
                format!("'{name}' ({})", h.count)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON error body with `status`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

pub(super) fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(status, body),
        Err(e) => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(format!("{{\"error\":\"{e}\"}}")),
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body)
}

/// The LOCK object of a lock, written straight from it (see [`locker_protocol::Lock`]), with
/// its queue and its holders' builds where the answer shows them (reads do; the answers to
/// changes do not).
pub(super) struct LockJson<'a>(pub(super) &'a Lock, pub(super) Option<ReadView<'a>>);

impl Serialize for LockJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let lock = self.0;
        let mut map = s.serialize_map(Some(6 + usize::from(self.1.is_some())))?;
        map.serialize_entry("key", &lock.key)?;
        map.serialize_entry("locked_by", &CountsJson(&lock.locked_by))?;
        map.serialize_entry("revision", &lock.revision)?;
        map.serialize_entry("locked_at", &lock.locked_at.map(timestamp))?;
        map.serialize_entry("token", &lock.token)?;
        let seen = self.1.as_ref().and_then(|view| view.seen);
        map.serialize_entry("holders", &HoldersJson(&lock.locked_by, seen))?;
        if let Some(view) = &self.1 {
            map.serialize_entry("queue", view)?;
        }
        map.end()
    }
}

/// What a read shows beside a lock: its waiters in order, as they stand at a time (places
/// whose grace ran out are gone, whether or not that has been committed yet), and what the
/// build watcher last learnt of its holders' builds. Serialises as the queue.
pub(super) struct ReadView<'a> {
    queue: Option<&'a Queue>,
    seen: Option<&'a Seen>,
    now: std::time::SystemTime,
}

impl<'a> ReadView<'a> {
    pub(super) fn of(
        queue: Option<&'a Queue>,
        seen: Option<&'a Seen>,
        now: std::time::SystemTime,
    ) -> Self {
        ReadView { queue, seen, now }
    }
}

impl Serialize for ReadView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let waiters = self.queue.into_iter().flat_map(|queue| queue.waiters());
        let mut list = s.serialize_seq(None)?;
        for waiter in waiters.filter(|w| w.lapses_at().is_none_or(|at| at > self.now)) {
            list.serialize_element(&json!({
                "requestor": waiter.requestor,
                "key": waiter.key,
                "since": timestamp(waiter.since),
                "owner": waiter.owner,
            }))?;
        }
        list.end()
    }
}

/// How many locks one piece of a streamed `GET /locks` holds: enough to keep the overhead
/// per piece small, few enough that writing one takes well under a millisecond.
pub(super) const LOCKS_PER_PIECE: usize = 512;

/// Every lock of a snapshot, by name, as one JSON object written a piece at a time: each piece
/// starts after the last name written, so the pieces own nothing but the snapshot.
#[derive(Clone)]
pub(super) struct LockPieces {
    table: LockTable,
    seen: Option<Arc<Seen>>,
    now: std::time::SystemTime,
    /// Where the next piece starts: `Some(None)` at the opening brace, `Some(Some(name))` after
    /// `name`; `None` once the closing brace is written.
    after: Option<Option<Arc<str>>>,
}

impl LockPieces {
    pub(super) fn new(
        table: LockTable,
        seen: Option<Arc<Seen>>,
        now: std::time::SystemTime,
    ) -> LockPieces {
        LockPieces {
            table,
            seen,
            now,
            after: Some(None),
        }
    }

    /// True when the locks do not fit in one piece.
    pub(super) fn is_large(&self) -> bool {
        self.table.locks.len() > LOCKS_PER_PIECE
    }
}

impl Iterator for LockPieces {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::ops::Bound;
        let after = self.after.take()?;
        let mut piece = Vec::with_capacity(64 * 1024);
        let lower = match &after {
            None => {
                piece.push(b'{');
                Bound::Unbounded
            }
            Some(name) => Bound::Excluded(name.clone()),
        };
        let mut written = 0;
        let mut last = None;
        for (name, lock) in self
            .table
            .locks
            .range((lower, Bound::Unbounded))
            .take(LOCKS_PER_PIECE)
        {
            if written > 0 || after.is_some() {
                piece.push(b',');
            }
            let result = serde_json::to_writer(&mut piece, &**name).and_then(|()| {
                piece.push(b':');
                let queue = ReadView::of(self.table.queue(name), self.seen.as_deref(), self.now);
                serde_json::to_writer(&mut piece, &LockJson(&lock.as_of(self.now), Some(queue)))
            });
            if let Err(e) = result {
                return Some(Err(std::io::Error::other(e)));
            }
            written += 1;
            last = Some(name.clone());
        }
        if written < LOCKS_PER_PIECE {
            piece.push(b'}');
        } else {
            self.after = Some(last);
        }
        Some(Ok(piece))
    }
}

/// Claims per requestor, as the original server wrote them.
struct CountsJson<'a>(&'a Holders);

impl Serialize for CountsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (requestor, count) in self.0.iter() {
            map.serialize_entry(requestor, &count)?;
        }
        map.end()
    }
}

/// Every holder, with when it claimed, when its lease ends and who it is for.
struct HoldersJson<'a>(&'a Holders, Option<&'a Seen>);

impl Serialize for HoldersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut list = s.serialize_seq(Some(self.0.len()))?;
        for h in self.0.entries() {
            list.serialize_element(&HolderJson(h, self.1))?;
        }
        list.end()
    }
}

/// A holder: its claims, how long it holds them, and, for one held while its build runs,
/// what Concourse last said of the build and when (where the answer shows it).
struct HolderJson<'a>(&'a Holder, Option<&'a Seen>);

impl Serialize for HolderJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let h = self.0;
        let build = self
            .1
            .zip(h.owner.get("build_id"))
            .filter(|_| h.hold == Hold::Build)
            .and_then(|(seen, id)| seen.builds.get(&id.parse().ok()?));
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("requestor", &h.requestor)?;
        map.serialize_entry("count", &h.count)?;
        map.serialize_entry("since", &h.since.map(timestamp))?;
        map.serialize_entry("expires_at", &h.expires_at.map(timestamp))?;
        map.serialize_entry("owner", &h.owner)?;
        map.serialize_entry("hold", h.hold.as_str())?;
        if let Some((status, checked_at)) = build {
            map.serialize_entry("build_status", status)?;
            map.serialize_entry("build_checked_at", &timestamp(*checked_at))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::domain::{LockTable, Op, Owner};

    #[test]
    fn the_pieces_make_one_object_with_every_lock_and_a_small_table_is_one_piece() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for count in [0, 1, 511, 512, 513, 1_100] {
            let mut table = LockTable::default();
            for i in 0..count {
                table.apply(
                    &format!("lock-{i:05}"),
                    Op::Lock,
                    &Claim::new("k", "r"),
                    now,
                );
            }
            let pieces: Vec<Vec<u8>> = LockPieces::new(table, None, now)
                .map(Result::unwrap)
                .collect();
            // Every piece but the closing one holds LOCKS_PER_PIECE locks.
            assert_eq!(pieces.len(), count / LOCKS_PER_PIECE + 1, "{count} locks");
            let whole: serde_json::Value = serde_json::from_slice(&pieces.concat())
                .unwrap_or_else(|e| panic!("{count} locks: {e}"));
            let locks = whole.as_object().unwrap();
            assert_eq!(locks.len(), count);
            if count > 0 {
                let last = format!("lock-{:05}", count - 1);
                assert_eq!(locks[&last]["locked_by"]["r"], 1, "{count} locks");
            }
        }
    }

    #[test]
    fn the_lock_object_is_what_the_protocol_crate_reads() {
        let mut table = LockTable::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let claim = Claim {
            ttl: Some(Duration::from_secs(90)),
            owner: Some(Owner::from([("job".into(), "deploy".into())])),
            ..Claim::new("k", "r")
        };
        let lock = table.apply("env", Op::Lock, &claim, now).lock;
        let json =
            serde_json::to_value(LockJson(&lock, Some(ReadView::of(None, None, now)))).unwrap();
        let read: locker_protocol::Lock = serde_json::from_value(json.clone()).unwrap();
        let expected = locker_protocol::Lock {
            key: "k".into(),
            locked_by: [("r".to_string(), 1)].into(),
            revision: 1,
            locked_at: Some("2027-01-15T08:00:00.000Z".into()),
            token: Some(1),
            holders: vec![locker_protocol::Holder {
                requestor: "r".into(),
                count: 1,
                since: Some("2027-01-15T08:00:00.000Z".into()),
                expires_at: Some("2027-01-15T08:01:30.000Z".into()),
                owner: [("job".to_string(), "deploy".to_string())].into(),
                hold: Some("until_unlocked".into()),
                build_status: None,
                build_checked_at: None,
            }],
            queue: Vec::new(),
        };
        assert_eq!(read, expected);
        let fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "holders",
                "key",
                "locked_at",
                "locked_by",
                "queue",
                "revision",
                "token"
            ],
            "no field the protocol crate does not know"
        );
    }
}
