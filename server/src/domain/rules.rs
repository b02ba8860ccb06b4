//! The lock rules: a pure state machine with no I/O and no clock of its own.
//!
//! A [`Lock`] is free or held by one key. Everyone who presents that key may claim it again
//! (the claims are counted per requestor, each requestor a [`Holder`]), and it becomes free
//! when every claim is released. [`Batch`] applies a sequence of requests on top of a
//! [`LockTable`] without touching it, so a storage backend can persist exactly the changed
//! locks and publish them only once they are durable. Time comes in as an argument.
//!
//! Leases: a claim may carry a time to live. Each holder has one deadline (the later of the
//! ones its claims asked for; none if any claim asked for none), and at that deadline every
//! claim of that holder is released ([`Batch::expire_due`]; [`Lock::as_of`] shows a lock as
//! it stands at a time, for reads between a deadline and its commit). A renewal moves a
//! deadline; it is durable like any change but keeps the lock's `revision`, which is the
//! resource's version: pipelines that trigger on lock changes must not fire on renewals.
//!
//! Fencing tokens: when a key takes a free lock, the lock's `token` becomes the table revision
//! of that change, so it is greater than every token the lock had before; every holder of the
//! key shares it until the lock is free again.
//!
//! A request may carry a request id (the HTTP `Idempotency-Key`). A lock remembers the ids of
//! the requests that changed it since it was last free (the last [`REMEMBERED_REQUESTS`]), and
//! of the one that freed it, so a client that retries after losing an answer does not claim (or
//! release) twice: the retry is answered as done and changes nothing, as long as what it did
//! still stands. Forgetting at each release keeps a lock's memory small: typically one or two
//! ids.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::history::{Action, DEFAULT_HISTORY_MAX, Entry};
use super::queue::{Grant, Place, Queue, Waiter};

/// How many request ids a lock remembers: enough for the retries of every sharer of a key
/// in flight at once; older ids are forgotten first.
pub const REMEMBERED_REQUESTS: usize = 8;

/// Who a claim is for (`team`, `pipeline`, `job`, `build`, `build_url`, ...), as the client
/// described it; field names in order.
pub type Owner = BTreeMap<String, String>;

/// The state of one lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The key that holds the lock; empty when the lock is free.
    pub key: String,
    /// The holders and their claims; empty when the lock is free.
    pub locked_by: Holders,
    /// The table revision of this lock's last change (renewals aside); 0 for a lock never
    /// changed here.
    pub revision: u64,
    /// When the current key took the lock; `None` when free (or unknown, for imported locks).
    pub locked_at: Option<SystemTime>,
    /// The fencing token of the current key's tenure; `None` when free.
    pub token: Option<u64>,
    /// Ids of the requests that changed this lock since it was last free, and of the one that
    /// freed it; oldest first, at most [`REMEMBERED_REQUESTS`].
    pub requests: Vec<String>,
}

impl Default for Lock {
    fn default() -> Lock {
        Lock::free()
    }
}

/// What [`LockTable::lock`] lends for a name never used.
static FREE: Lock = Lock::free();

impl Lock {
    /// A free lock at revision 0: what a name never used is.
    pub const fn free() -> Lock {
        Lock {
            key: String::new(),
            locked_by: Holders(Vec::new()),
            revision: 0,
            locked_at: None,
            token: None,
            requests: Vec::new(),
        }
    }

    /// True when no key holds the lock.
    pub fn is_free(&self) -> bool {
        self.locked_by.is_empty()
    }

    /// True when the request with this id changed this lock recently.
    pub fn remembers(&self, request_id: &str) -> bool {
        self.requests.iter().any(|id| id == request_id)
    }

    fn remember(&mut self, request_id: &str) {
        if self.requests.len() >= REMEMBERED_REQUESTS {
            self.requests.remove(0);
        }
        self.requests.push(request_id.to_owned());
    }

    /// The earliest deadline of a holder, if any holder has one.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.locked_by.next_deadline()
    }

    /// The lock as it stands at `now`: holders whose deadline has passed are gone (and the
    /// lock is free if none is left), whether or not their expiry has been committed yet.
    pub fn as_of(&self, now: SystemTime) -> Cow<'_, Lock> {
        if self.next_deadline().is_none_or(|deadline| deadline > now) {
            return Cow::Borrowed(self);
        }
        let mut lock = self.clone();
        lock.expire(now);
        Cow::Owned(lock)
    }

    /// Releases the claims of every holder whose deadline is at or before `now`; true if any.
    fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.locked_by.len();
        self.locked_by
            .0
            .retain(|h| h.expires_at.is_none_or(|at| at > now));
        if self.locked_by.len() == before {
            return false;
        }
        if self.is_free() {
            self.set_free();
        }
        true
    }

    fn set_free(&mut self) {
        self.key.clear();
        self.locked_at = None;
        self.token = None;
        self.requests.clear();
    }

    /// Checks the invariants a lock read from storage must satisfy.
    pub fn check_invariants(&self) -> Result<(), String> {
        match (self.key.is_empty(), self.locked_by.is_empty(), self.token) {
            (true, false, _) => Err("it has holders but an empty key".into()),
            (false, true, _) => Err("it has a key but no holders".into()),
            (true, true, Some(_)) => Err("it is free but has a token".into()),
            (false, false, None) => Err("it is held but has no token".into()),
            _ => Ok(()),
        }
    }
}

/// One requestor's claims on a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub requestor: String,
    /// How many claims it holds; never zero.
    pub count: u64,
    /// When its first current claim was made; `None` when unknown (imported claims).
    pub since: Option<SystemTime>,
    /// When its claims expire; `None`: never.
    pub expires_at: Option<SystemTime>,
    /// Who the claims are for, as the latest lock that gave an owner said.
    pub owner: Owner,
    /// How long the claims are held: until unlocked, or while their build runs.
    pub hold: Hold,
}

/// How long a holder's claims last (besides a lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hold {
    /// Until they are unlocked (or their lease ends).
    #[default]
    UntilUnlocked,
    /// Also only while the build in the owner's `build_id` runs: the server asks Concourse
    /// and releases them once it has finished.
    Build,
}

impl Hold {
    /// The name the API and the storage use.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::UntilUnlocked => "until_unlocked",
            Hold::Build => "build",
        }
    }

    pub fn parse(name: &str) -> Option<Hold> {
        [Hold::UntilUnlocked, Hold::Build]
            .into_iter()
            .find(|h| h.as_str() == name)
    }
}

impl Holder {
    /// A holder of `count` claims known only by name (as the original server stored them).
    pub fn known_by_name(requestor: String, count: u64) -> Holder {
        Holder {
            requestor,
            count,
            since: None,
            expires_at: None,
            owner: Owner::new(),
            hold: Hold::UntilUnlocked,
        }
    }
}

/// The holders of a lock, sorted by requestor, no zero counts.
///
/// A lock has one or two holders almost always, so a sorted vector is both the fastest and
/// the smallest map here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders(Vec<Holder>);

impl Holders {
    /// Holders from stored entries; refuses repeated requestors and zero counts.
    pub fn from_entries(mut entries: Vec<Holder>) -> Result<Holders, String> {
        entries.sort_by(|a, b| a.requestor.cmp(&b.requestor));
        for pair in entries.windows(2) {
            if pair[0].requestor == pair[1].requestor {
                return Err(format!("holder '{}' is listed twice", pair[0].requestor));
            }
        }
        if let Some(h) = entries.iter().find(|h| h.count == 0) {
            return Err(format!("holder '{}' has a count of 0", h.requestor));
        }
        entries.shrink_to_fit();
        Ok(Holders(entries))
    }

    /// The number of claims `requestor` holds, if any.
    pub fn get(&self, requestor: &str) -> Option<&u64> {
        self.holder(requestor).map(|h| &h.count)
    }

    /// The holder `requestor`, if it holds a claim.
    pub fn holder(&self, requestor: &str) -> Option<&Holder> {
        self.find(requestor).ok().map(|i| &self.0[i])
    }

    /// Adds one claim for `claim`'s requestor at `now`; its deadline becomes the later of the
    /// one it had and the one the claim asks for (no deadline is the latest of all).
    fn add(&mut self, claim: &Claim, now: SystemTime) {
        let deadline = claim.ttl.map(|ttl| deadline(now, ttl));
        match self.find(&claim.requestor) {
            Ok(i) => {
                let holder = &mut self.0[i];
                holder.count += 1;
                holder.expires_at = match (holder.expires_at, deadline) {
                    (Some(had), Some(asked)) => Some(had.max(asked)),
                    // A claim without a deadline lives for ever, and so does its holder.
                    _ => None,
                };
                if let Some(owner) = &claim.owner {
                    holder.owner.clone_from(owner);
                }
                if let Some(hold) = claim.hold {
                    holder.hold = hold;
                }
            }
            Err(i) => {
                // One holder is the common case: room for exactly one, not the four a Vec
                // makes at its first push (83 MB against 47 MB resident at 100,000 locks).
                self.0.reserve_exact(1);
                self.0.insert(
                    i,
                    Holder {
                        requestor: claim.requestor.clone(),
                        count: 1,
                        since: Some(now),
                        expires_at: deadline,
                        owner: claim.owner.clone().unwrap_or_default(),
                        hold: claim.hold.unwrap_or_default(),
                    },
                );
            }
        }
    }

    /// Releases one claim of `requestor`; false if it holds none.
    fn release(&mut self, requestor: &str) -> bool {
        match self.find(requestor) {
            Ok(i) if self.0[i].count > 1 => self.0[i].count -= 1,
            Ok(i) => {
                self.0.remove(i);
            }
            Err(_) => return false,
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Requestors and counts, in requestor order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|h| (h.requestor.as_str(), h.count))
    }

    /// Every holder, in requestor order.
    pub fn entries(&self) -> &[Holder] {
        &self.0
    }

    /// The earliest deadline of a holder.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.0.iter().filter_map(|h| h.expires_at).min()
    }

    fn find(&self, requestor: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|h| h.requestor.as_str().cmp(requestor))
    }
}

impl FromIterator<(String, u64)> for Holders {
    /// Collects claims known by name only; zero counts are left out and a repeated
    /// requestor's counts add up.
    fn from_iter<I: IntoIterator<Item = (String, u64)>>(iter: I) -> Self {
        let mut claims: Vec<(String, u64)> = iter.into_iter().filter(|(_, c)| *c > 0).collect();
        claims.sort_by(|a, b| a.0.cmp(&b.0));
        claims.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 += later.1;
            }
            same
        });
        Holders(
            claims
                .into_iter()
                .map(|(r, c)| Holder::known_by_name(r, c))
                .collect(),
        )
    }
}

/// Who asks, and how: the key that identifies a claim and the requestor it is counted for,
/// the request's id when the client gave one (retries of one request share it), and for a
/// lock or renewal its time to live and owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub requestor: String,
    pub request_id: Option<String>,
    /// How long the claim lives (a lock) or from now on (a renewal); `None`: for ever.
    pub ttl: Option<Duration>,
    /// Who the claim is for; `None` keeps what the holder had.
    pub owner: Option<Owner>,
    /// Why (a force-release says), for the history.
    pub reason: Option<String>,
    /// The client's address, for the history.
    pub client: Option<String>,
    /// How long the claim is held; `None` keeps what the holder had (a new one: until
    /// unlocked).
    pub hold: Option<Hold>,
}

impl Claim {
    /// A claim of `key` for `requestor`, with nothing else said.
    pub fn new(key: impl Into<String>, requestor: impl Into<String>) -> Claim {
        Claim {
            key: key.into(),
            requestor: requestor.into(),
            ..Claim::default()
        }
    }
}

/// What a request wants done to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Claim the lock if it can be had now.
    Lock,
    /// A lock an operator takes by hand (with a note, as the claim's reason): decided as a
    /// lock, recorded as a reservation.
    Reserve,
    /// Claim the lock, or wait for it in its queue as poll `poll`: join at the end, or resume
    /// the place of the waiter with the claim's request id. The place (and then the grant)
    /// outlives the poll by `grace`.
    Wait {
        poll: u64,
        grace: Duration,
    },
    Unlock,
    /// Move the requestor's deadline to now + the claim's ttl.
    Renew,
    /// Poll `poll`'s time is up: answer it where it stands.
    StopWaiting {
        poll: u64,
    },
    /// Poll `poll`'s client is gone: nobody will take its answer, nor a grant made to it.
    Abandon {
        poll: u64,
    },
    /// Withdraw the waiter with the claim's request id, releasing a grant made to it.
    Withdraw,
    /// Release every claim, whoever holds it (an operator freeing a stuck lock); the claim
    /// names who asks.
    ForceRelease,
    /// The build a holder held its claims for has finished: release every claim of the
    /// claim's requestor, if it still holds them for the build in the claim's owner
    /// `build_id`. The claim's reason says how the build ended.
    BuildFinished,
}

/// How a request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The claim was added (the lock was free or already held with this key).
    Acquired,
    /// One claim of this requestor was released.
    Released,
    /// The requestor's deadline was moved.
    Renewed,
    /// Unlock of a lock that is free: nothing to do.
    NotHeld,
    /// Unlock with the right key by a requestor that holds no claim: nothing to do.
    NoClaim,
    /// Renewal by a requestor that holds no claim (it expired, or was never taken).
    NotHolding,
    /// Another key holds the lock.
    HeldByOther,
    /// The lock is held with this key, but others with another key wait for it first.
    OthersWaiting,
    /// The request waits in the lock's queue (at the decision's place).
    Queued,
    /// The waiter was withdrawn from the queue (nothing was granted to it).
    Withdrawn,
    /// No waiter or grant had that request id (or poll): nothing to do.
    NotQueued,
}

impl Verdict {
    /// True when the request was refused because another key holds the lock (or waits for it
    /// first).
    pub fn is_conflict(self) -> bool {
        matches!(self, Verdict::HeldByOther | Verdict::OthersWaiting)
    }
}

/// When a lease of `ttl` taken at `now` ends: cut to the whole millisecond, the precision of
/// the API and the state file, so that the deadline a client is shown (and the one a restart
/// reads back, or another server on the same database) is exactly the one the server keeps.
fn deadline(now: SystemTime, ttl: Duration) -> SystemTime {
    let at = now + ttl;
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    at - Duration::from_nanos(u64::from(since_epoch.subsec_nanos() % 1_000_000))
}

/// Decides a lock, unlock or renewal `op` for `claim` against `lock` at time `now` (a lock
/// with no holder past its deadline at `now`: see [`Batch::expire_due`]); `others_waiting`
/// says whether someone with another key than the claim's waits in the lock's queue, which
/// keeps a new requestor of the holding key from going ahead of them.
///
/// Returns the verdict and, when the lock changes, its new state (revision and token left for
/// the caller to assign). The queue's own operations are [`Batch::apply`]'s.
fn decide(
    lock: &Lock,
    op: Op,
    claim: &Claim,
    others_waiting: bool,
    now: SystemTime,
) -> (Verdict, Option<Lock>) {
    if let Some(verdict) = replayed(lock, op, claim) {
        return (verdict, None);
    }
    let (verdict, mut next) = decide_afresh(lock, op, claim, others_waiting, now);
    if let Some(next) = next.as_mut() {
        if next.is_free() {
            next.set_free();
        }
        // A renewal needs no memory: applied again it only moves the deadline, and its ids
        // would push out those of the locks and unlocks whose retries must be recognised.
        if let Some(id) = claim.request_id.as_ref().filter(|_| op != Op::Renew) {
            next.remember(id);
        }
    }
    (verdict, next)
}

/// The verdict for a retry of a request that already changed `lock`, if it is one: a lock is
/// done while the requestor still holds a claim (after that, it is decided afresh); an unlock
/// is done for good. Renewals are not remembered: a retry renews again.
fn replayed(lock: &Lock, op: Op, claim: &Claim) -> Option<Verdict> {
    let id = claim.request_id.as_deref()?;
    if !lock.remembers(id) {
        return None;
    }
    let holds = lock.key == claim.key && lock.locked_by.get(&claim.requestor).is_some();
    match op {
        Op::Lock | Op::Reserve | Op::Wait { .. } if holds => Some(Verdict::Acquired),
        Op::Unlock => Some(Verdict::Released),
        _ => None,
    }
}

fn decide_afresh(
    lock: &Lock,
    op: Op,
    claim: &Claim,
    others_waiting: bool,
    now: SystemTime,
) -> (Verdict, Option<Lock>) {
    let same_key = lock.is_free() || lock.key == claim.key;
    match op {
        _ if !same_key => (Verdict::HeldByOther, None),
        // A reservation takes a free lock, not another claim on a held one.
        Op::Reserve if !lock.is_free() => (Verdict::HeldByOther, None),
        Op::Lock | Op::Reserve => {
            // Re-entry is always granted; a new sharer of the key waits behind other keys.
            if others_waiting && lock.locked_by.get(&claim.requestor).is_none() {
                return (Verdict::OthersWaiting, None);
            }
            let mut next = lock.clone();
            if next.is_free() {
                next.key = claim.key.clone();
                next.locked_at = Some(now);
            }
            next.locked_by.add(claim, now);
            (Verdict::Acquired, Some(next))
        }
        Op::Renew => {
            let Ok(i) = lock.locked_by.find(&claim.requestor) else {
                return (Verdict::NotHolding, None);
            };
            let mut next = lock.clone();
            let holder = &mut next.locked_by.0[i];
            holder.expires_at = claim.ttl.map(|ttl| deadline(now, ttl));
            if let Some(owner) = &claim.owner {
                holder.owner.clone_from(owner);
            }
            (Verdict::Renewed, Some(next))
        }
        Op::Unlock if lock.is_free() => (Verdict::NotHeld, None),
        Op::Unlock => {
            let mut next = lock.clone();
            if !next.locked_by.release(&claim.requestor) {
                return (Verdict::NoClaim, None);
            }
            (Verdict::Released, Some(next))
        }
        Op::Wait { .. }
        | Op::StopWaiting { .. }
        | Op::Abandon { .. }
        | Op::Withdraw
        | Op::ForceRelease
        | Op::BuildFinished => (Verdict::NotQueued, None),
    }
}

static NO_OWNER: Owner = Owner::new();

/// What a history entry says, before it has an id.
struct Record<'a> {
    action: Action,
    requestor: &'a str,
    key: &'a str,
    owner: &'a Owner,
    token: Option<u64>,
    revision: u64,
    reason: Option<&'a str>,
    client: Option<&'a str>,
}

impl Record<'_> {
    fn at(self, id: u64, lock: &str, now: SystemTime) -> Entry {
        Entry {
            id,
            at: now,
            lock: lock.to_owned(),
            action: self.action,
            requestor: self.requestor.to_owned(),
            key: self.key.to_owned(),
            owner: self.owner.clone(),
            token: self.token,
            revision: self.revision,
            reason: self.reason.map(str::to_owned),
            client: self.client.map(str::to_owned),
        }
    }
}

/// Locks by name, in name order: a persistent map, so a copy costs nothing and a change
/// copies only the path to the changed lock. That is what lets the store publish every
/// committed table as an immutable snapshot.
pub type Locks = imbl::OrdMap<Arc<str>, Arc<Lock>>;

/// The queues of the locks someone waits for (or was granted from lately), by lock name.
pub type Queues = imbl::OrdMap<Arc<str>, Arc<Queue>>;

/// The locks with a deadline (a lease, or a place or grant that lapses), by the earliest.
pub type Deadlines = imbl::OrdSet<(SystemTime, Arc<str>)>;

/// Every known lock, the table-wide revision counter, the queues, and when the next lease or
/// place ends. Cloning it is cheap (see [`Locks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTable {
    /// Incremented by every change; never goes backwards.
    pub revision: u64,
    pub locks: Locks,
    queues: Queues,
    deadlines: Deadlines,
    /// The latest history entries, oldest first, at most `history_max`.
    history: imbl::Vector<Arc<Entry>>,
    /// The id of the latest entry ever made (0: none yet).
    history_id: u64,
    history_max: usize,
}

impl Default for LockTable {
    fn default() -> LockTable {
        LockTable {
            revision: 0,
            locks: Locks::default(),
            queues: Queues::default(),
            deadlines: Deadlines::default(),
            history: imbl::Vector::new(),
            history_id: 0,
            history_max: DEFAULT_HISTORY_MAX,
        }
    }
}

impl LockTable {
    /// A table of `locks` at `revision`.
    pub fn new(revision: u64, locks: impl IntoIterator<Item = (String, Lock)>) -> LockTable {
        let mut table = LockTable {
            revision,
            ..LockTable::default()
        };
        for (name, lock) in locks {
            table.update(Arc::from(name), Some(lock), None);
        }
        table
    }

    /// The lock called `name`, or a free lock at revision 0 for a name never used.
    pub fn lock(&self, name: &str) -> &Lock {
        self.locks.get(name).map_or(&FREE, |lock| lock)
    }

    /// An owned copy of [`LockTable::lock`].
    pub fn get(&self, name: &str) -> Lock {
        self.lock(name).clone()
    }

    /// The queue of the lock called `name`, if anyone waits for it (or was granted it lately).
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name).map(|queue| &**queue)
    }

    /// Every non-empty queue, by lock name.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// The latest history entries, oldest first.
    pub fn history(&self) -> &imbl::Vector<Arc<Entry>> {
        &self.history
    }

    /// The id of the latest history entry ever made.
    pub fn history_id(&self) -> u64 {
        self.history_id
    }

    /// Takes in history read from storage (oldest first), keeping the latest `max` entries.
    pub fn load_history(&mut self, entries: impl IntoIterator<Item = Entry>, max: usize) {
        self.history_max = max;
        for entry in entries {
            self.history_id = self.history_id.max(entry.id);
            self.history.push_back(Arc::new(entry));
        }
        self.trim_history();
    }

    /// Makes the next history entry's id follow `id` at least: the count goes on where the
    /// store says it stood, even when the entries up to it are gone.
    pub fn continue_history_after(&mut self, id: u64) {
        self.history_id = self.history_id.max(id);
    }

    /// The table without its history: what a state file holds.
    #[cfg(test)]
    pub fn without_history(&self) -> LockTable {
        LockTable {
            history: imbl::Vector::new(),
            history_id: 0,
            ..self.clone()
        }
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_max {
            self.history.pop_front();
        }
    }

    /// The earliest deadline of any holder, place or grant.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        self.deadlines.get_min().map(|(at, _)| *at)
    }

    /// Starts a batch of requests on top of this table.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            base: self,
            revision: self.revision,
            changes: BTreeMap::new(),
            queues: BTreeMap::new(),
            answers: Vec::new(),
            history: Vec::new(),
            history_id: self.history_id,
        }
    }

    /// Takes in the changes of a batch that has been made durable; returns the history entries
    /// they recorded (shared with the table's history, which may keep fewer of them).
    pub fn commit(&mut self, changes: Changes) -> Vec<Arc<Entry>> {
        self.revision = changes.revision;
        let Changes {
            mut locks,
            queues,
            history,
            ..
        } = changes;
        let recorded: Vec<Arc<Entry>> = history.into_iter().map(Arc::new).collect();
        for entry in &recorded {
            self.history_id = self.history_id.max(entry.id);
            self.history.push_back(entry.clone());
        }
        self.trim_history();
        for (name, queue) in queues {
            let lock = locks.remove(&name);
            self.update(Arc::from(name), lock, Some(queue));
        }
        for (name, lock) in locks {
            self.update(Arc::from(name), Some(lock), None);
        }
        recorded
    }

    /// Adds a lock read from storage (replacing one of the same name).
    pub fn load(&mut self, name: &str, lock: Lock) {
        self.update(Arc::from(name), Some(lock), None);
    }

    /// Replaces the lock and (or) the queue called `name`, keeping the deadlines in step.
    /// One look-up per map: the lock it replaces comes back from the insert.
    fn update(&mut self, name: Arc<str>, lock: Option<Lock>, queue: Option<Queue>) {
        let (lease_before, lease_after) = match lock {
            Some(lock) => {
                let after = lock.next_deadline();
                let replaced = self.locks.insert(name.clone(), Arc::new(lock));
                (replaced.and_then(|old| old.next_deadline()), after)
            }
            None => {
                let lease = self.locks.get(&name).and_then(|lock| lock.next_deadline());
                (lease, lease)
            }
        };
        let (lapse_before, lapse_after) = match queue {
            Some(queue) => {
                let after = queue.next_lapse();
                let replaced = if queue.is_empty() {
                    self.queues.remove(&name)
                } else {
                    self.queues.insert(name.clone(), Arc::new(queue))
                };
                (replaced.and_then(|old| old.next_lapse()), after)
            }
            None => {
                let lapse = self.queues.get(&name).and_then(|queue| queue.next_lapse());
                (lapse, lapse)
            }
        };
        let earliest = |a: Option<SystemTime>, b: Option<SystemTime>| a.into_iter().chain(b).min();
        let before = earliest(lease_before, lapse_before);
        let after = earliest(lease_after, lapse_after);
        if before != after {
            if let Some(at) = before {
                self.deadlines.remove(&(at, name.clone()));
            }
            if let Some(at) = after {
                self.deadlines.insert((at, name));
            }
        }
    }

    /// True when the deadline index holds exactly each lock's earliest lease end or queue
    /// lapse: what [`LockTable::update`] keeps in step.
    #[cfg(test)]
    pub(crate) fn deadlines_in_step(&self) -> bool {
        let names: std::collections::BTreeSet<&Arc<str>> =
            self.locks.keys().chain(self.queues.keys()).collect();
        let expected: Deadlines = names
            .into_iter()
            .filter_map(|name| {
                let lease = self.locks.get(name).and_then(|lock| lock.next_deadline());
                let lapse = self.queues.get(name).and_then(|queue| queue.next_lapse());
                let earliest = lease.into_iter().chain(lapse).min()?;
                Some((earliest, name.clone()))
            })
            .collect();
        expected == self.deadlines
    }

    /// Applies one request directly (after expiring what is due); for tests and tools that
    /// need no storage.
    pub fn apply(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Decision {
        let mut batch = self.batch();
        batch.expire_due(now);
        let decision = batch.apply(name, op, claim, now);
        let changes = batch.into_changes();
        self.commit(changes);
        decision
    }
}

/// The outcome of one request: the verdict, the lock as it stands afterwards, and, for a
/// request in the queue, its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub lock: Lock,
    pub place: Option<Place>,
}

/// An answer for a poll that waits in a queue, decided by another request of the batch (or by
/// its expiry): the grant of its lock, its place once its time is up, or its withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollAnswer {
    pub poll: u64,
    pub decision: Decision,
}

/// Requests applied on top of a table, not yet durable.
#[derive(Debug)]
pub struct Batch<'a> {
    base: &'a LockTable,
    revision: u64,
    changes: BTreeMap<String, Lock>,
    queues: BTreeMap<String, Queue>,
    answers: Vec<PollAnswer>,
    history: Vec<Entry>,
    history_id: u64,
}

/// What a batch did: the locks to write (durable), the queues to take in (volatile), the new
/// table revision, and the answers for polls it decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub revision: u64,
    pub locks: BTreeMap<String, Lock>,
    pub queues: BTreeMap<String, Queue>,
    pub answers: Vec<PollAnswer>,
    /// The history entries of the changes, in order.
    pub history: Vec<Entry>,
}

impl Changes {
    /// True when no lock and no queue changed.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty() && self.queues.is_empty()
    }
}

impl<'a> Batch<'a> {
    /// The lock as this batch sees it: its own change if any, else the table's.
    pub fn lock(&self, name: &str) -> &Lock {
        self.changes
            .get(name)
            .unwrap_or_else(|| self.base.lock(name))
    }

    /// The queue as this batch sees it.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        match self.queues.get(name) {
            Some(queue) => Some(queue),
            None => self.base.queue(name),
        }
    }

    /// The batch's own copy of a queue, to change.
    fn queue_mut(&mut self, name: &str) -> &mut Queue {
        let base = self.base;
        self.queues
            .entry(name.to_owned())
            .or_insert_with(|| base.queue(name).cloned().unwrap_or_default())
    }

    /// Releases every claim whose deadline is at or before `now`, and every place and
    /// uncollected grant whose grace has run out; each lock that changes takes the next
    /// revision, and a lock left free goes to the first in its queue. Returns how many locks
    /// changed. Run it first in every batch, so that no request is decided against a lapsed
    /// claim.
    pub fn expire_due(&mut self, now: SystemTime) -> usize {
        let due: Vec<Arc<str>> = self
            .base
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, name)| name.clone())
            .collect();
        let revision = self.revision;
        for name in &due {
            let mut lock = self.lock(name).clone();
            let before = lock.clone();
            if lock.expire(now) {
                self.revision += 1;
                lock.revision = self.revision;
                for holder in before.locked_by.entries() {
                    if lock.locked_by.holder(&holder.requestor).is_none() {
                        let entry = Record {
                            action: Action::Expire,
                            requestor: &holder.requestor,
                            key: &before.key,
                            owner: &holder.owner,
                            token: before.token,
                            revision: lock.revision,
                            reason: Some("its lease ended"),
                            client: None,
                        };
                        self.record(name, entry, now);
                    }
                }
                self.changes.insert(name.to_string(), lock);
            }
            self.lapse(name, now);
            self.promote(name, now);
        }
        (self.revision - revision) as usize
    }

    /// Drops the places whose grace ran out, and the grants: an uncollected one is released.
    fn lapse(&mut self, name: &str, now: SystemTime) {
        if self
            .queue(name)
            .and_then(Queue::next_lapse)
            .is_none_or(|at| at > now)
        {
            return;
        }
        let queue = self.queue_mut(name);
        queue
            .waiting
            .retain(|w| w.lapses_at.is_none_or(|at| at > now));
        let (lapsed, kept) = std::mem::take(&mut queue.granted)
            .into_iter()
            .partition(|g| g.lapses_at <= now);
        queue.granted = kept;
        for grant in lapsed.into_iter().filter(|g: &Grant| !g.collected) {
            let why = "granted from the queue, but nobody collected it within the grace";
            self.release_grant(name, &grant, why, now);
        }
    }

    /// Decides one request; a change takes the next revision (a renewal keeps the lock's). A
    /// lock left free goes to the first in its queue in the same batch.
    pub fn apply(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Decision {
        let (verdict, place) = match op {
            Op::Lock | Op::Reserve | Op::Unlock | Op::Renew => {
                (self.change(name, op, claim, now), None)
            }
            Op::Wait { poll, grace } => self.wait(name, poll, grace, claim, now),
            Op::StopWaiting { poll } => self.stop_waiting(name, poll, false, now),
            Op::Abandon { poll } => self.stop_waiting(name, poll, true, now),
            Op::Withdraw => (self.withdraw(name, claim, now), None),
            Op::ForceRelease => (self.force_release(name, claim, now), None),
            Op::BuildFinished => (self.build_finished(name, claim, now), None),
        };
        self.promote(name, now);
        Decision {
            verdict,
            lock: self.lock(name).clone(),
            place,
        }
    }

    /// A lock, unlock or renewal.
    fn change(&mut self, name: &str, op: Op, claim: &Claim, now: SystemTime) -> Verdict {
        let current = self.lock(name);
        let others_waiting = self
            .queue(name)
            .is_some_and(|queue| queue.has_other_key(&claim.key));
        let was_free = current.is_free();
        let (verdict, next) = decide(current, op, claim, others_waiting, now);
        if let Some(mut next) = next {
            let revision = self.revision + 1;
            if op != Op::Renew {
                next.revision = revision;
            }
            if was_free && !next.is_free() {
                next.token = Some(revision);
            }
            let action = match op {
                Op::Unlock => Action::Unlock,
                Op::Renew => Action::Renew,
                Op::Reserve => Action::Reserve,
                _ => Action::Lock,
            };
            let holder = next
                .locked_by
                .holder(&claim.requestor)
                .or_else(|| current.locked_by.holder(&claim.requestor));
            let entry = Record {
                action,
                requestor: &claim.requestor,
                key: &claim.key,
                owner: holder.map_or(&NO_OWNER, |h| &h.owner),
                token: next.token.or(current.token),
                revision: next.revision,
                reason: claim.reason.as_deref(),
                client: claim.client.as_deref(),
            }
            .at(self.history_id + 1, name, now);
            self.revision = revision;
            self.history_id += 1;
            self.history.push(entry);
            self.changes.insert(name.to_owned(), next);
        } else if verdict == Verdict::Acquired {
            // A retry of a lock that was granted: the grant is collected.
            self.collect(name, claim);
        }
        verdict
    }

    /// A lock that waits in the queue when it cannot be had now.
    fn wait(
        &mut self,
        name: &str,
        poll: u64,
        grace: Duration,
        claim: &Claim,
        now: SystemTime,
    ) -> (Verdict, Option<Place>) {
        let resumed = claim
            .request_id
            .as_deref()
            .filter(|_| replayed(self.lock(name), Op::Lock, claim).is_none())
            .and_then(|id| self.queue(name)?.waiter_with_id(id));
        if let Some(i) = resumed {
            let queue = self.queue_mut(name);
            let place = queue.place(i);
            let waiter = Arc::make_mut(&mut queue.waiting[i]);
            let earlier = waiter.poll.replace(poll);
            waiter.lapses_at = None;
            waiter.grace = grace;
            if let Some(earlier) = earlier {
                // One poll per place: the one it replaces is told where the place stands.
                self.answer(name, earlier, Verdict::Queued, Some(place));
            }
            return (Verdict::Queued, Some(place));
        }
        let verdict = self.change(name, Op::Lock, claim, now);
        if !verdict.is_conflict() {
            return (verdict, None);
        }
        let queue = self.queue_mut(name);
        queue.waiting.push_back(Arc::new(Waiter {
            requestor: claim.requestor.clone(),
            key: claim.key.clone(),
            since: now,
            owner: claim.owner.clone().unwrap_or_default(),
            ttl: claim.ttl,
            hold: claim.hold,
            request_id: claim.request_id.clone(),
            grace,
            poll: Some(poll),
            lapses_at: None,
            client: claim.client.clone(),
        }));
        (Verdict::Queued, Some(queue.place(queue.len() - 1)))
    }

    /// Ends poll `poll`: its waiter keeps its place for its grace if it has a request id, and
    /// leaves the queue if not. A poll whose client is `gone` is not answered, and a grant
    /// made to it counts as not collected.
    fn stop_waiting(
        &mut self,
        name: &str,
        poll: u64,
        gone: bool,
        now: SystemTime,
    ) -> (Verdict, Option<Place>) {
        let Some(queue) = self.queue(name) else {
            return (Verdict::NotQueued, None);
        };
        if let Some(i) = queue.waiter_with_poll(poll) {
            let queue = self.queue_mut(name);
            let place = queue.place(i);
            let waiter = Arc::make_mut(&mut queue.waiting[i]);
            waiter.poll = None;
            if waiter.request_id.is_some() {
                waiter.lapses_at = Some(now + waiter.grace);
            } else {
                queue.waiting.remove(i);
            }
            if !gone {
                self.answer(name, poll, Verdict::Queued, Some(place));
            }
            return (Verdict::Queued, Some(place));
        }
        match queue.grant_with_poll(poll) {
            Some(i) if gone => {
                let queue = self.queue_mut(name);
                let grant = &mut queue.granted[i];
                grant.poll = None;
                grant.collected = false;
                if grant.request_id.is_none() {
                    // Nobody can ever collect it: release it now.
                    let grant = queue.granted.remove(i);
                    let why = "granted from the queue to a client that had gone";
                    self.release_grant(name, &grant, why, now);
                }
                (Verdict::Released, None)
            }
            _ => (Verdict::NotQueued, None),
        }
    }

    /// Withdraws the waiter with the claim's request id, and releases a grant made to it.
    fn withdraw(&mut self, name: &str, claim: &Claim, now: SystemTime) -> Verdict {
        let Some(id) = claim.request_id.as_deref() else {
            return Verdict::NotQueued;
        };
        let Some(queue) = self.queue(name) else {
            return Verdict::NotQueued;
        };
        let (waiter, grant) = (queue.waiter_with_id(id), queue.grant_with_id(id));
        let mut verdict = Verdict::NotQueued;
        if let Some(i) = waiter {
            let queue = self.queue_mut(name);
            let place = queue.place(i);
            let waiter = queue.waiting.remove(i);
            if let Some(poll) = waiter.poll {
                self.answer(name, poll, Verdict::Withdrawn, Some(place));
            }
            verdict = Verdict::Withdrawn;
        }
        if let Some(i) = grant {
            let grant = self.queue_mut(name).granted.remove(i);
            let why = "granted from the queue, then withdrawn";
            if self.release_grant(name, &grant, why, now) {
                verdict = Verdict::Released;
            }
        }
        verdict
    }

    /// Releases every claim on the lock; the next key to take it gets a greater token. A
    /// retry (the same request id) releases nothing more.
    fn force_release(&mut self, name: &str, claim: &Claim, now: SystemTime) -> Verdict {
        let lock = self.lock(name);
        let retried = claim
            .request_id
            .as_deref()
            .is_some_and(|id| lock.remembers(id));
        if retried {
            return Verdict::Released;
        }
        if lock.is_free() {
            return Verdict::NotHeld;
        }
        let mut next = lock.clone();
        next.locked_by = Holders::default();
        next.set_free();
        if let Some(id) = &claim.request_id {
            next.remember(id);
        }
        next.revision = self.revision + 1;
        let entry = Record {
            action: Action::ForceRelease,
            requestor: &claim.requestor,
            key: &lock.key,
            owner: claim.owner.as_ref().unwrap_or(&NO_OWNER),
            token: lock.token,
            revision: next.revision,
            reason: claim.reason.as_deref(),
            client: claim.client.as_deref(),
        }
        .at(self.history_id + 1, name, now);
        self.revision += 1;
        self.history_id += 1;
        self.history.push(entry);
        self.changes.insert(name.to_owned(), next);
        // The grants of that tenure went with it.
        if self
            .queue(name)
            .is_some_and(|queue| !queue.granted.is_empty())
        {
            self.queue_mut(name).granted.clear();
        }
        Verdict::Released
    }

    /// Releases every claim of the claim's requestor whose hold is its build (the one in the
    /// claim's owner `build_id`), which has finished.
    fn build_finished(&mut self, name: &str, claim: &Claim, now: SystemTime) -> Verdict {
        let lock = self.lock(name);
        let build = claim.owner.as_ref().and_then(|o| o.get("build_id"));
        let holds = lock.locked_by.holder(&claim.requestor).is_some_and(|h| {
            h.hold == Hold::Build && h.owner.get("build_id") == build && build.is_some()
        });
        if !holds {
            return Verdict::NoClaim;
        }
        let unlock = Claim {
            key: lock.key.clone(),
            requestor: claim.requestor.clone(),
            reason: claim.reason.clone(),
            ..Claim::default()
        };
        let mut verdict = Verdict::NoClaim;
        while self.lock(name).locked_by.holder(&claim.requestor).is_some() {
            verdict = self.change(name, Op::Unlock, &unlock, now);
            if verdict != Verdict::Released {
                break;
            }
        }
        verdict
    }

    /// Marks the grant made to the claim's request id as collected.
    fn collect(&mut self, name: &str, claim: &Claim) {
        let Some(id) = claim.request_id.as_deref() else {
            return;
        };
        if let Some(i) = self.queue(name).and_then(|queue| queue.grant_with_id(id)) {
            let grant = &mut self.queue_mut(name).granted[i];
            grant.collected = true;
            grant.poll = None;
        }
    }

    /// Releases one claim of a grant's requestor, if that claim is still of the grant's tenure;
    /// true if it released one. `why` goes into the history.
    fn release_grant(&mut self, name: &str, grant: &Grant, why: &str, now: SystemTime) -> bool {
        let lock = self.lock(name);
        if lock.token != Some(grant.token) || lock.locked_by.get(&grant.requestor).is_none() {
            return false;
        }
        let claim = Claim {
            reason: Some(why.to_owned()),
            ..Claim::new(lock.key.clone(), grant.requestor.clone())
        };
        self.change(name, Op::Unlock, &claim, now) == Verdict::Released
    }

    /// Hands the lock called `name` to the first in its queue if it is free: for a lock that
    /// was changed by someone else than this table's batches (another server on the same
    /// database), whose queue here has not been looked at since.
    pub fn hand_over(&mut self, name: &str, now: SystemTime) {
        self.lapse(name, now);
        self.promote(name, now);
    }

    /// Hands a free lock to the first in its queue, together with every waiter directly
    /// behind it with the same key: one change, one new token.
    fn promote(&mut self, name: &str, now: SystemTime) {
        if !self.lock(name).is_free() || self.queue(name).is_none_or(|q| q.waiting.is_empty()) {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        let mut next = self.lock(name).clone();
        let queue = self.queue_mut(name);
        // The lock is free: the grants of earlier tenures have nothing left to release or to
        // be collected (a retry of one is decided by the lock's own memory), so they go; kept,
        // a busy queue would drag a grace's worth of them through every change.
        queue.granted.clear();
        let key = queue.waiting[0].key.clone();
        let mut answered = Vec::new();
        let mut granted = Vec::new();
        while queue.waiting.front().is_some_and(|w| w.key == key) {
            let waiter = queue.waiting.pop_front().expect("the front was just seen");
            let claim = Claim {
                key: waiter.key.clone(),
                requestor: waiter.requestor.clone(),
                request_id: waiter.request_id.clone(),
                ttl: waiter.ttl,
                owner: Some(waiter.owner.clone()),
                hold: waiter.hold,
                ..Claim::default()
            };
            next.locked_by.add(&claim, now);
            if let Some(id) = &waiter.request_id {
                next.remember(id);
            }
            queue.granted.push(Grant {
                requestor: waiter.requestor.clone(),
                request_id: waiter.request_id.clone(),
                token: revision,
                poll: waiter.poll,
                collected: waiter.poll.is_some(),
                lapses_at: now + waiter.grace,
            });
            answered.extend(waiter.poll);
            granted.push(waiter);
        }
        next.key = key;
        next.locked_at = Some(now);
        next.token = Some(revision);
        next.revision = revision;
        for waiter in granted {
            let entry = Record {
                action: Action::Granted,
                requestor: &waiter.requestor,
                key: &waiter.key,
                owner: &waiter.owner,
                token: Some(revision),
                revision,
                reason: None,
                client: waiter.client.as_deref(),
            };
            let entry = entry.at(self.next_history_id(), name, now);
            self.history.push(entry);
        }
        self.changes.insert(name.to_owned(), next);
        for poll in answered {
            self.answer(name, poll, Verdict::Acquired, None);
        }
    }

    fn next_history_id(&mut self) -> u64 {
        self.history_id += 1;
        self.history_id
    }

    fn record(&mut self, name: &str, entry: Record<'_>, now: SystemTime) {
        let entry = entry.at(self.next_history_id(), name, now);
        self.history.push(entry);
    }

    /// Queues an answer for poll `poll`, with the lock as it stands now.
    fn answer(&mut self, name: &str, poll: u64, verdict: Verdict, place: Option<Place>) {
        let lock = self.lock(name).clone();
        self.answers.push(PollAnswer {
            poll,
            decision: Decision {
                verdict,
                lock,
                place,
            },
        });
    }

    /// The table this batch builds on.
    pub fn base(&self) -> &'a LockTable {
        self.base
    }

    /// What the batch changed so far.
    pub fn changes(&self) -> &BTreeMap<String, Lock> {
        &self.changes
    }

    /// The table revision after this batch.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn into_changes(self) -> Changes {
        Changes {
            revision: self.revision,
            locks: self.changes,
            queues: self.queues,
            answers: self.answers,
            history: self.history,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::time::Duration;

    fn claim(key: &str, requestor: &str) -> Claim {
        Claim::new(key, requestor)
    }

    fn retried(key: &str, requestor: &str, id: &str) -> Claim {
        Claim {
            request_id: Some(id.into()),
            ..claim(key, requestor)
        }
    }

    #[test]
    fn a_retried_lock_claims_once() {
        let mut table = LockTable::default();
        let first = table.apply("env", Op::Lock, &retried("k", "x", "r1"), at(1));
        let again = table.apply("env", Op::Lock, &retried("k", "x", "r1"), at(2));
        assert_eq!(
            again.verdict,
            Verdict::Acquired,
            "the retry is answered as done"
        );
        assert_eq!(again.lock, first.lock, "and changes nothing");
        assert_eq!(table.revision, 1);
        let other = table.apply("env", Op::Lock, &retried("k", "x", "r2"), at(3));
        assert_eq!(
            other.lock.locked_by.get("x"),
            Some(&2),
            "a new id claims again"
        );
    }

    #[test]
    fn a_retried_unlock_releases_once() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(2));
        let again = table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(3));
        assert_eq!(again.verdict, Verdict::Released);
        assert_eq!(again.lock.locked_by.get("x"), Some(&1), "one claim is left");
        assert_eq!(table.revision, 3);
    }

    #[test]
    fn a_retried_lock_whose_claim_was_released_is_decided_afresh() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &retried("a", "x", "r1"), at(1));
        table.apply("env", Op::Unlock, &claim("a", "x"), at(2));
        table.apply("env", Op::Lock, &claim("b", "y"), at(3));
        let again = table.apply("env", Op::Lock, &retried("a", "x", "r1"), at(4));
        assert_eq!(
            again.verdict,
            Verdict::HeldByOther,
            "a retry never reports a lock it does not hold"
        );
    }

    #[test]
    fn a_freed_lock_remembers_only_the_request_that_freed_it() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &retried("k", "x", "l1"), at(1));
        table.apply("env", Op::Lock, &retried("k", "y", "l2"), at(1));
        table.apply("env", Op::Unlock, &retried("k", "x", "u1"), at(2));
        assert_eq!(table.get("env").requests, ["l1", "l2", "u1"]);
        table.apply("env", Op::Unlock, &retried("k", "y", "u2"), at(3));
        assert_eq!(table.get("env").requests, ["u2"]);
        let again = table.apply("env", Op::Unlock, &retried("k", "y", "u2"), at(4));
        assert_eq!(
            again.verdict,
            Verdict::Released,
            "its retry is still recognised"
        );
        table.apply("env", Op::Unlock, &claim("k", "y"), at(5));
        assert_eq!(
            table.get("env").requests,
            ["u2"],
            "a request that changes nothing changes no memory"
        );
        table.apply("env", Op::Lock, &claim("k2", "z"), at(6));
        table.apply("env", Op::Unlock, &claim("k2", "z"), at(7));
        assert!(
            table.get("env").requests.is_empty(),
            "freed by a request without an id"
        );
    }

    #[test]
    fn a_lock_remembers_its_last_requests_only() {
        let mut table = LockTable::default();
        for i in 0..=REMEMBERED_REQUESTS {
            table.apply("env", Op::Lock, &retried("k", "x", &format!("r{i}")), at(1));
        }
        let lock = table.get("env");
        assert_eq!(lock.requests.len(), REMEMBERED_REQUESTS);
        assert!(!lock.remembers("r0"), "the oldest is forgotten");
        assert!(lock.remembers(&format!("r{REMEMBERED_REQUESTS}")));
        let refused = table.apply("env", Op::Lock, &retried("other", "y", "r9"), at(2));
        assert_eq!(refused.verdict, Verdict::HeldByOther);
        assert!(
            !table.get("env").remembers("r9"),
            "a refusal is not remembered"
        );
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn free_lock_is_acquired_and_records_time_and_revision() {
        let mut table = LockTable::default();
        let d = table.apply("env", Op::Lock, &claim("k", "job"), at(10));
        assert_eq!(d.verdict, Verdict::Acquired);
        assert_eq!(d.lock.key, "k");
        assert_eq!(d.lock.locked_by.iter().collect::<Vec<_>>(), [("job", 1)]);
        assert_eq!(d.lock.locked_by.entries()[0].since, Some(at(10)));
        assert_eq!(d.lock.locked_at, Some(at(10)));
        assert_eq!(d.lock.revision, 1);
        assert_eq!(table.revision, 1);
    }

    #[test]
    fn second_key_is_refused_while_first_holds() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = table.apply("env", Op::Lock, &claim("b", "y"), at(2));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(d.lock.key, "a", "the refusal reports the holder");
        assert_eq!(table.revision, 1, "a refusal is not a change");
    }

    #[test]
    fn same_key_is_reentrant_and_shared_between_requestors() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        table.apply("env", Op::Lock, &claim("k", "x"), at(2));
        let d = table.apply("env", Op::Lock, &claim("k", "y"), at(3));
        assert_eq!(
            d.lock.locked_by.iter().collect::<Vec<_>>(),
            [("x", 2), ("y", 1)]
        );
        assert_eq!(
            d.lock.locked_at,
            Some(at(1)),
            "locked_at is when the key took it"
        );
    }

    #[test]
    fn lock_n_times_needs_n_unlocks() {
        let mut table = LockTable::default();
        for _ in 0..3 {
            table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        }
        for left in [2, 1] {
            let d = table.apply("env", Op::Unlock, &claim("k", "x"), at(2));
            assert_eq!(d.verdict, Verdict::Released);
            assert_eq!(d.lock.locked_by.get("x"), Some(&left));
        }
        let d = table.apply("env", Op::Unlock, &claim("k", "x"), at(2));
        assert!(d.lock.is_free());
        assert_eq!(d.lock.key, "");
        assert_eq!(d.lock.locked_at, None);
    }

    #[test]
    fn unlock_of_free_or_unknown_lock_changes_nothing() {
        let mut table = LockTable::default();
        let d = table.apply("never", Op::Unlock, &claim("k", "x"), at(1));
        assert_eq!(d.verdict, Verdict::NotHeld);
        assert_eq!(table.revision, 0);
        assert!(table.locks.is_empty(), "no entry is made for a no-op");
    }

    #[test]
    fn unlock_with_other_key_is_refused() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = table.apply("env", Op::Unlock, &claim("b", "x"), at(2));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(d.lock.locked_by.get("x"), Some(&1));
    }

    #[test]
    fn unlock_by_requestor_without_claim_changes_nothing() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        let d = table.apply("env", Op::Unlock, &claim("k", "y"), at(2));
        assert_eq!(d.verdict, Verdict::NoClaim);
        assert_eq!(table.revision, 1);
    }

    #[test]
    fn holders_stay_sorted_without_zero_counts() {
        let mut holders: Holders = [("b".into(), 1), ("a".into(), 0), ("c".into(), 2)]
            .into_iter()
            .collect();
        assert_eq!(holders.iter().collect::<Vec<_>>(), [("b", 1), ("c", 2)]);
        holders.add(&claim("k", "a"), at(1));
        holders.add(&claim("k", "c"), at(1));
        assert_eq!(
            holders.iter().collect::<Vec<_>>(),
            [("a", 1), ("b", 1), ("c", 3)]
        );
        assert!(holders.release("b"));
        assert!(!holders.release("b"), "b holds nothing any more");
        assert_eq!(holders.get("c"), Some(&3));
        assert_eq!(holders.len(), 2);
    }

    #[test]
    fn batch_sees_its_own_changes_but_leaves_table_alone() {
        let table = LockTable::default();
        let mut batch = table.batch();
        batch.apply("env", Op::Lock, &claim("a", "x"), at(1));
        let d = batch.apply("env", Op::Lock, &claim("b", "y"), at(1));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        assert_eq!(batch.revision(), 1);
        assert!(table.locks.is_empty());
    }

    fn leased(key: &str, requestor: &str, ttl_secs: u64) -> Claim {
        Claim {
            ttl: Some(Duration::from_secs(ttl_secs)),
            ..claim(key, requestor)
        }
    }

    #[test]
    fn a_deadline_is_the_whole_millisecond_that_is_shown() {
        let mut table = LockTable::default();
        let taken = at(100) + Duration::from_nanos(1_234_567);
        let claim = Claim {
            ttl: Some(Duration::from_nanos(300_000_900)),
            ..claim("k", "x")
        };
        table.apply("env", Op::Lock, &claim, taken);
        let shown = at(100) + Duration::from_millis(301);
        assert_eq!(
            table.next_deadline(),
            Some(shown),
            "cut, never later than asked"
        );
        let text = locker_protocol::timestamp(shown);
        assert_eq!(humantime::parse_rfc3339(&text).unwrap(), shown, "{text}");
        table.apply("env", Op::Renew, &claim, taken + Duration::from_millis(5));
        assert_eq!(
            table.next_deadline(),
            Some(shown + Duration::from_millis(5))
        );
    }

    #[test]
    fn a_lease_ends_at_its_deadline_and_the_expiry_takes_a_revision() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &leased("k", "x", 60), at(100));
        assert_eq!(table.next_deadline(), Some(at(160)));
        let lock = table.get("env");
        assert_eq!(lock.locked_by.entries()[0].expires_at, Some(at(160)));
        assert!(!lock.as_of(at(159)).is_free(), "held until the deadline");
        assert!(
            lock.as_of(at(160)).is_free(),
            "free at the deadline, committed or not"
        );

        let mut batch = table.batch();
        assert_eq!(batch.expire_due(at(159)), 0);
        assert_eq!(batch.expire_due(at(160)), 1);
        let changes = batch.into_changes();
        table.commit(changes);
        let lock = table.get("env");
        assert!(lock.is_free());
        assert_eq!((lock.revision, table.revision), (2, 2));
        assert_eq!(
            (lock.token, lock.locked_at, lock.key.as_str()),
            (None, None, "")
        );
        assert_eq!(
            table.next_deadline(),
            None,
            "the index forgets an expired lease"
        );
    }

    #[test]
    fn only_the_holder_whose_lease_ended_loses_its_claims() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &leased("k", "x", 10), at(0));
        table.apply("env", Op::Lock, &leased("k", "x", 10), at(0));
        table.apply("env", Op::Lock, &claim("k", "y"), at(0));
        let d = table.apply("env", Op::Lock, &claim("other", "z"), at(11));
        assert_eq!(d.verdict, Verdict::HeldByOther, "y holds it for ever");
        let lock = table.get("env");
        assert_eq!(lock.locked_by.iter().collect::<Vec<_>>(), [("y", 1)]);
        assert_eq!(lock.token, Some(1), "a partial release keeps the token");
    }

    #[test]
    fn locking_again_keeps_the_later_deadline_and_no_ttl_means_for_ever() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &leased("k", "x", 100), at(0));
        table.apply("env", Op::Lock, &leased("k", "x", 10), at(50));
        assert_eq!(
            table.next_deadline(),
            Some(at(100)),
            "the earlier ask does not shorten it"
        );
        table.apply("env", Op::Lock, &leased("k", "x", 100), at(60));
        assert_eq!(table.next_deadline(), Some(at(160)));
        table.apply("env", Op::Lock, &claim("k", "x"), at(70));
        assert_eq!(
            table.next_deadline(),
            None,
            "a claim without ttl never expires"
        );
    }

    #[test]
    fn a_renewal_moves_the_deadline_but_not_the_locks_revision() {
        let mut table = LockTable::default();
        table.apply("env", Op::Lock, &leased("k", "x", 60), at(0));
        let d = table.apply("env", Op::Renew, &leased("k", "x", 600), at(50));
        assert_eq!(d.verdict, Verdict::Renewed);
        assert_eq!(d.lock.locked_by.entries()[0].expires_at, Some(at(650)));
        assert_eq!(d.lock.revision, 1, "the lock's revision stays");
        assert_eq!(table.revision, 2, "the renewal is a change of the table");
        let d = table.apply("env", Op::Renew, &leased("k", "x", 5), at(100));
        assert_eq!(
            d.lock.locked_by.entries()[0].expires_at,
            Some(at(105)),
            "a renewal sets the deadline, shorter or not"
        );
    }

    #[test]
    fn renewing_what_one_does_not_hold_is_refused() {
        let mut table = LockTable::default();
        let d = table.apply("env", Op::Renew, &leased("k", "x", 60), at(0));
        assert_eq!(d.verdict, Verdict::NotHolding, "never taken");
        table.apply("env", Op::Lock, &leased("k", "x", 60), at(0));
        let d = table.apply("env", Op::Renew, &leased("k", "y", 60), at(1));
        assert_eq!(d.verdict, Verdict::NotHolding, "same key, no claim");
        let d = table.apply("env", Op::Renew, &leased("other", "x", 60), at(1));
        assert_eq!(d.verdict, Verdict::HeldByOther);
        let d = table.apply("env", Op::Renew, &leased("k", "x", 60), at(61));
        assert_eq!(d.verdict, Verdict::NotHolding, "expired");
        assert!(table.get("env").is_free());
    }

    #[test]
    fn renewals_leave_the_request_memory_to_locks_and_unlocks() {
        let mut table = LockTable::default();
        let lock = Claim {
            request_id: Some("l1".into()),
            ..leased("k", "x", 60)
        };
        table.apply("env", Op::Lock, &lock, at(0));
        for i in 0..=REMEMBERED_REQUESTS {
            let renew = Claim {
                request_id: Some(format!("r{i}")),
                ..leased("k", "x", 600)
            };
            let d = table.apply("env", Op::Renew, &renew, at(10));
            assert_eq!(d.verdict, Verdict::Renewed);
        }
        assert_eq!(table.get("env").requests, ["l1"]);
        let again = table.apply("env", Op::Lock, &lock, at(20));
        assert_eq!(
            again.lock.locked_by.get("x"),
            Some(&1),
            "the lock's retry is still known"
        );
        let renew = Claim {
            request_id: Some("r0".into()),
            ..leased("k", "x", 600)
        };
        let d = table.apply("env", Op::Renew, &renew, at(30));
        assert_eq!(
            d.lock.locked_by.entries()[0].expires_at,
            Some(at(630)),
            "a retried renewal renews again"
        );
    }

    #[test]
    fn the_latest_owner_given_wins() {
        let mut table = LockTable::default();
        let with_owner = |job: &str| Claim {
            owner: Some(Owner::from([("job".to_string(), job.to_string())])),
            ..claim("k", "x")
        };
        table.apply("env", Op::Lock, &with_owner("build"), at(0));
        table.apply("env", Op::Lock, &claim("k", "x"), at(1));
        assert_eq!(
            table.get("env").locked_by.entries()[0].owner["job"],
            "build"
        );
        table.apply("env", Op::Lock, &with_owner("deploy"), at(2));
        assert_eq!(
            table.get("env").locked_by.entries()[0].owner["job"],
            "deploy"
        );
    }

    #[test]
    fn a_token_is_the_revision_at_which_the_key_took_the_lock() {
        let mut table = LockTable::default();
        table.apply("other", Op::Lock, &claim("o", "o"), at(0));
        let first = table.apply("env", Op::Lock, &claim("k", "x"), at(0)).lock;
        assert_eq!(first.token, Some(2));
        let shared = table.apply("env", Op::Lock, &claim("k", "y"), at(0)).lock;
        assert_eq!(shared.token, Some(2), "every holder of the key shares it");
        table.apply("env", Op::Unlock, &claim("k", "x"), at(0));
        table.apply("env", Op::Unlock, &claim("k", "y"), at(0));
        assert_eq!(table.get("env").token, None, "a free lock has none");
        let next = table.apply("env", Op::Lock, &claim("k2", "z"), at(0)).lock;
        assert_eq!(next.token, Some(table.revision));
        assert!(next.token > first.token);
    }

    /// The simplest model of the rules: a key and a count per requestor, nothing else.
    #[derive(Default)]
    struct Model {
        locks: HashMap<String, (String, HashMap<String, u64>)>,
    }

    impl Model {
        /// Returns true when the request is granted (lock) or released something (unlock).
        fn apply(&mut self, name: &str, op: Op, key: &str, requestor: &str) -> bool {
            let (holder, counts) = self.locks.entry(name.into()).or_default();
            let free = counts.values().all(|&c| c == 0);
            match op {
                Op::Lock if free || holder == key => {
                    *holder = key.into();
                    *counts.entry(requestor.into()).or_default() += 1;
                    true
                }
                Op::Lock => false,
                Op::Unlock if !free && holder == key => match counts.get_mut(requestor) {
                    Some(c) if *c > 0 => {
                        *c -= 1;
                        true
                    }
                    _ => false,
                },
                Op::Unlock => false,
                Op::Renew => {
                    !free && holder == key && counts.get(requestor).is_some_and(|&c| c > 0)
                }
                _ => unreachable!("the model knows locks, unlocks and renewals only"),
            }
        }
    }

    proptest! {
        #[test]
        fn rules_match_the_model(
            steps in proptest::collection::vec((0..3usize, any::<bool>(), 0..3usize, 0..3usize), 1..200)
        ) {
            let names = ["a", "b", "c"];
            let keys = ["k1", "k2", "k3"];
            let requestors = ["r1", "r2", "r3"];
            let mut table = LockTable::default();
            let mut model = Model::default();
            let mut changes = 0;
            for (i, (n, lock, k, r)) in steps.into_iter().enumerate() {
                let op = if lock { Op::Lock } else { Op::Unlock };
                let d = table.apply(names[n], op, &claim(keys[k], requestors[r]), at(i as u64));
                let granted = model.apply(names[n], op, keys[k], requestors[r]);
                prop_assert_eq!(
                    matches!(d.verdict, Verdict::Acquired | Verdict::Released), granted,
                    "step {} {:?} {} {} {}", i, op, names[n], keys[k], requestors[r]);
                if granted { changes += 1; }
                prop_assert_eq!(table.revision, changes, "revision counts changes");
                for (name, lock) in &table.locks {
                    prop_assert!(lock.check_invariants().is_ok(), "{}: {:?}", name, lock);
                    let (key, counts) = &model.locks[&**name];
                    let held: Holders = counts.iter().map(|(r, c)| (r.clone(), *c)).collect();
                    prop_assert_eq!(lock.locked_by.iter().collect::<Vec<_>>(), held.iter().collect::<Vec<_>>());
                    if !held.is_empty() { prop_assert_eq!(&lock.key, key); }
                }
            }
        }
    }

    proptest! {
        /// Whatever happens (locks, unlocks, renewals, leases ending, time passing), a lock's
        /// token grows every time a key takes it, every holder shares it, and no read at any
        /// time shows a holder past its deadline.
        #[test]
        fn tokens_only_grow_and_no_lapsed_holder_is_seen(
            steps in proptest::collection::vec(
                (0..2usize, 0..3u8, 0..2usize, 0..3usize, proptest::option::of(1..30u64), 0..20u64),
                1..150,
            )
        ) {
            let names = ["a", "b"];
            let keys = ["k1", "k2"];
            let requestors = ["r1", "r2", "r3"];
            let mut table = LockTable::default();
            let mut now = at(1_000);
            let mut last_token: HashMap<&str, u64> = HashMap::new();
            for (n, op, k, r, ttl, pause) in steps {
                now += Duration::from_secs(pause);
                let op = [Op::Lock, Op::Unlock, Op::Renew][op as usize];
                let claim = Claim {
                    ttl: ttl.map(Duration::from_secs).or(if op == Op::Renew { Some(Duration::from_secs(5)) } else { None }),
                    ..claim(keys[k], requestors[r])
                };
                let before = table.lock(names[n]).as_of(now).into_owned();
                let d = table.apply(names[n], op, &claim, now);
                if before.is_free() && !d.lock.is_free() {
                    let token = d.lock.token.expect("a held lock has a token");
                    let previous = last_token.insert(names[n], token);
                    prop_assert!(previous.is_none_or(|p| token > p), "token {} after {:?}", token, previous);
                }
                for (name, lock) in &table.locks {
                    prop_assert!(lock.check_invariants().is_ok(), "{}: {:?}", name, lock);
                    let seen = lock.as_of(now);
                    prop_assert!(seen.locked_by.entries().iter().all(|h| h.expires_at.is_none_or(|t| t > now)));
                    prop_assert!(seen.is_free() || seen.token == lock.token);
                }
                prop_assert_eq!(table.next_deadline(), table.locks.values().filter_map(|l| l.next_deadline()).min());
                prop_assert!(table.deadlines_in_step());
            }
        }
    }
}
