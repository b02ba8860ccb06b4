//! How a lock is written to storage and read back, shared by the state file and the journal.
//!
//! The stored form is the API's LOCK object plus what only storage keeps (the ids of the
//! requests that changed the lock). Reading checks every value, so a damaged or hand-edited
//! file is refused with the reason instead of being half-loaded.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use locker_protocol::names;
use serde::de::{MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use std::time::SystemTime;

use locker_protocol::timestamp;

use crate::domain::{Hold, Holder, Holders, Lock, Owner, REMEMBERED_REQUESTS};

/// A lock as stored, in the state file or a journal record: version 2 lists `holders`;
/// version 1 (and the journal records it wrote) had only `locked_by`, requestor to count.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredLock {
    key: String,
    #[serde(default)]
    locked_by: Option<UniqueMap<u64>>,
    #[serde(default)]
    holders: Option<Vec<StoredHolder>>,
    revision: u64,
    locked_at: Option<String>,
    #[serde(default)]
    token: Option<u64>,
    #[serde(default)]
    requests: Vec<String>,
}

/// A holder as stored (version 2).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredHolder {
    requestor: String,
    count: u64,
    /// Absent when it is the lock's `locked_at` (as it almost always is); `null` when unknown.
    #[serde(default, deserialize_with = "present")]
    since: Option<Option<String>>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    /// `[[name, value], ...]`: pairs, not a map, because YAML parsers limit a key to 1,024
    /// characters and an owner's names are the client's.
    owner: Option<Vec<(String, String)>>,
    /// `"build"` for a claim held while its build runs; absent: until unlocked.
    #[serde(default)]
    hold: Option<String>,
}

fn parse_time(field: &str, text: Option<String>) -> Result<Option<SystemTime>, String> {
    text.map(|s| {
        humantime::parse_rfc3339(&s).map_err(|e| format!("{field} '{s}' is not RFC 3339 ({e})"))
    })
    .transpose()
}

impl StoredLock {
    /// Converts and checks a stored lock; its revision may not exceed `max_revision`.
    pub(crate) fn into_lock(self, max_revision: u64) -> Result<Lock, String> {
        let locked_at = parse_time("locked_at", self.locked_at)?;
        if self.revision > max_revision {
            return Err(format!(
                "it has revision {}, above the file's revision {max_revision}",
                self.revision
            ));
        }
        if self.token.is_some_and(|token| token > max_revision) {
            return Err(format!(
                "it has token {}, above the file's revision {max_revision}",
                self.token.unwrap_or_default()
            ));
        }
        if self.requests.len() > REMEMBERED_REQUESTS {
            return Err(format!(
                "it remembers {} request ids, more than the {REMEMBERED_REQUESTS} kept",
                self.requests.len()
            ));
        }
        for id in &self.requests {
            names::check_request_id(id)?;
        }
        let locked_by = match (self.locked_by, self.holders) {
            (Some(counts), None) => counts.0.into_iter().collect(),
            (None, Some(holders)) => {
                // Exactly as many as there are: collecting through `Result` would start at
                // room for four and then shrink, and the pieces that shrinking leaves behind,
                // one per lock, cost 16 MB of resident memory at 100,000 locks (67 against 51).
                let mut entries = Vec::with_capacity(holders.len());
                for holder in holders {
                    entries.push(holder.into_holder(locked_at)?);
                }
                Holders::from_entries(entries)?
            }
            (Some(_), Some(_)) => return Err("it has both locked_by and holders".into()),
            (None, None) => return Err("it has neither locked_by nor holders".into()),
        };
        // Locks stored before fencing tokens existed get the revision of their last change:
        // below every token handed out from now on.
        let token = match self.token {
            None if !locked_by.is_empty() => Some(self.revision),
            token => token,
        };
        let lock = Lock {
            key: self.key,
            locked_by,
            revision: self.revision,
            locked_at,
            token,
            requests: self.requests,
        };
        lock.check_invariants()?;
        Ok(lock)
    }
}

/// Reads a field that may be `null` as `Some(None)`, so that absent and `null` differ.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl StoredHolder {
    fn into_holder(self, locked_at: Option<SystemTime>) -> Result<Holder, String> {
        // Made only for an error: a load of 100,000 holders formats nothing.
        let what = || format!("holder '{}'", self.requestor);
        let time =
            |field: &str, text| parse_time(field, text).map_err(|e| format!("{}: {e}", what()));
        Ok(Holder {
            since: match self.since {
                None => locked_at,
                Some(since) => time("since", since)?,
            },
            expires_at: time("expires_at", self.expires_at)?,
            owner: match self.owner {
                None => Owner::new(),
                Some(pairs) => {
                    let count = pairs.len();
                    let owner: Owner = pairs.into_iter().collect();
                    if owner.len() != count {
                        return Err(format!("{}: its owner names a field twice", what()));
                    }
                    owner
                }
            },
            hold: match self.hold.as_deref() {
                None => Hold::UntilUnlocked,
                Some(name) => Hold::parse(name).ok_or_else(|| {
                    format!("{}: hold '{name}' is not build or until_unlocked", what())
                })?,
            },
            requestor: self.requestor,
            count: self.count,
        })
    }
}

/// A string-keyed map that refuses duplicate keys instead of keeping the last one.
pub(crate) struct UniqueMap<V>(pub(crate) BTreeMap<String, V>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UniqueVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueVisitor<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key '{k}'")));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(UniqueVisitor(PhantomData))
    }
}

/// A lock as storage writes it (version 2).
pub(crate) struct StoredLockView<'a>(pub(crate) &'a Lock);

impl Serialize for StoredLockView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let lock = self.0;
        let with_requests = !lock.requests.is_empty();
        let mut map = s.serialize_map(Some(5 + usize::from(with_requests)))?;
        map.serialize_entry("key", &lock.key)?;
        map.serialize_entry("holders", &HoldersView(lock))?;
        map.serialize_entry("revision", &lock.revision)?;
        map.serialize_entry("locked_at", &lock.locked_at.map(timestamp))?;
        map.serialize_entry("token", &lock.token)?;
        if with_requests {
            map.serialize_entry("requests", &lock.requests)?;
        }
        map.end()
    }
}

/// A lock's holders as a list; what is unknown, empty, or the lock's own `locked_at` (for
/// `since`) is left out, to keep the file small.
struct HoldersView<'a>(&'a Lock);

impl Serialize for HoldersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let holders = &self.0.locked_by;
        let mut list = s.serialize_seq(Some(holders.len()))?;
        for holder in holders.entries() {
            list.serialize_element(&HolderView(holder, self.0.locked_at))?;
        }
        list.end()
    }
}

struct HolderView<'a>(&'a Holder, Option<SystemTime>);

impl Serialize for HolderView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let HolderView(h, locked_at) = *self;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("requestor", &h.requestor)?;
        map.serialize_entry("count", &h.count)?;
        if h.since != locked_at {
            map.serialize_entry("since", &h.since.map(timestamp))?;
        }
        if let Some(at) = h.expires_at {
            map.serialize_entry("expires_at", &timestamp(at))?;
        }
        if !h.owner.is_empty() {
            let pairs: Vec<(&String, &String)> = h.owner.iter().collect();
            map.serialize_entry("owner", &pairs)?;
        }
        if h.hold != Hold::UntilUnlocked {
            map.serialize_entry("hold", h.hold.as_str())?;
        }
        map.end()
    }
}

/// A history entry as stored, in the history file and in a journal record.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredEntry {
    id: u64,
    at: String,
    lock: String,
    op: String,
    requestor: String,
    key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    owner: Vec<(String, String)>,
    #[serde(default)]
    token: Option<u64>,
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
}

impl StoredEntry {
    pub(crate) fn of(entry: &crate::domain::Entry) -> StoredEntry {
        StoredEntry {
            id: entry.id,
            at: timestamp(entry.at),
            lock: entry.lock.clone(),
            op: entry.action.as_str().to_owned(),
            requestor: entry.requestor.clone(),
            key: entry.key.clone(),
            owner: entry
                .owner
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            token: entry.token,
            revision: entry.revision,
            reason: entry.reason.clone(),
            client: entry.client.clone(),
        }
    }

    pub(crate) fn into_entry(self) -> Result<crate::domain::Entry, String> {
        let action = crate::domain::Action::parse(&self.op)
            .ok_or_else(|| format!("history entry {}: unknown op '{}'", self.id, self.op))?;
        let at = parse_time("at", Some(self.at))?.expect("a time was given");
        Ok(crate::domain::Entry {
            id: self.id,
            at,
            lock: self.lock,
            action,
            requestor: self.requestor,
            key: self.key,
            owner: self.owner.into_iter().collect(),
            token: self.token,
            revision: self.revision,
            reason: self.reason,
            client: self.client,
        })
    }
}
