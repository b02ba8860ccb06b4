//! The history: one entry per change to a claim, recorded by the batch that makes the change,
//! so that a backend stores it in the same commit.
//!
//! Every entry has an `id` that grows by one with every entry, across the whole table (a
//! change can make several entries: an expiry of two holders, a hand-over to a run of
//! waiters), so paging by the last id seen never repeats or skips one.

use std::time::SystemTime;

use super::rules::Owner;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Lock,
    Unlock,
    Renew,
    /// A lease ended.
    Expire,
    /// An operator released every claim.
    ForceRelease,
    /// The lock was handed to a waiter from its queue.
    Granted,
    /// An operator took the lock by hand, with a note.
    Reserve,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Lock,
        Action::Unlock,
        Action::Renew,
        Action::Expire,
        Action::ForceRelease,
        Action::Granted,
        Action::Reserve,
    ];

    /// The name the API and the storage use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Lock => "lock",
            Action::Unlock => "unlock",
            Action::Renew => "renew",
            Action::Expire => "expire",
            Action::ForceRelease => "force-release",
            Action::Granted => "granted-from-queue",
            Action::Reserve => "reserve",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// One change to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub at: SystemTime,
    pub lock: String,
    pub action: Action,
    /// Whose claim changed (for a force-release: who released).
    pub requestor: String,
    pub key: String,
    pub owner: Owner,
    /// The token of the tenure the change belongs to.
    pub token: Option<u64>,
    /// The lock's revision after the change.
    pub revision: u64,
    /// Why, where a reason was given or the server acted by itself.
    pub reason: Option<String>,
    /// The client's address, for changes a client asked for.
    pub client: Option<String>,
}

/// How many entries a table keeps when nobody says.
pub const DEFAULT_HISTORY_MAX: usize = 100_000;
