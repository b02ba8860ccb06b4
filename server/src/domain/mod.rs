//! The lock domain: what a lock is and the rules that change it.
//!
//! Pure: no I/O and no clock of its own (time is an argument), so every rule can be
//! property-tested and every storage backend decides with this same code.

pub mod history;
pub mod queue;
pub mod rules;

pub use history::{Action, DEFAULT_HISTORY_MAX, Entry};
pub use queue::{Place, Queue, Waiter};
pub use rules::{
    Batch, Changes, Claim, Decision, Hold, Holder, Holders, Lock, LockTable, Locks, Op, Owner,
    PollAnswer, REMEMBERED_REQUESTS, Verdict,
};
