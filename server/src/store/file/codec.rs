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
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{Lock, REMEMBERED_REQUESTS};

/// A lock as stored, in the state file or a journal record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoredLock {
    key: String,
    locked_by: UniqueMap<u64>,
    revision: u64,
    locked_at: Option<String>,
    #[serde(default)]
    requests: Vec<String>,
}

impl StoredLock {
    /// Converts and checks a stored lock; its revision may not exceed `max_revision`.
    pub(super) fn into_lock(self, max_revision: u64) -> Result<Lock, String> {
        let locked_at = match self.locked_at {
            None => None,
            Some(s) => Some(
                humantime::parse_rfc3339(&s)
                    .map_err(|e| format!("locked_at '{s}' is not RFC 3339 ({e})"))?,
            ),
        };
        if self.revision > max_revision {
            return Err(format!(
                "it has revision {}, above the file's revision {max_revision}",
                self.revision
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
        let lock = Lock {
            key: self.key,
            locked_by: self.locked_by.0.into_iter().collect(),
            revision: self.revision,
            locked_at,
            requests: self.requests,
        };
        lock.check_invariants()?;
        Ok(lock)
    }
}

/// A string-keyed map that refuses duplicate keys instead of keeping the last one.
pub(super) struct UniqueMap<V>(pub(super) BTreeMap<String, V>);

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

/// A lock as storage writes it.
pub(super) struct StoredLockView<'a>(pub(super) &'a Lock);

impl Serialize for StoredLockView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let lock = self.0;
        let with_requests = !lock.requests.is_empty();
        let mut map = s.serialize_map(Some(4 + usize::from(with_requests)))?;
        map.serialize_entry("key", &lock.key)?;
        map.serialize_entry("locked_by", &HoldersView(&lock.locked_by))?;
        map.serialize_entry("revision", &lock.revision)?;
        map.serialize_entry("locked_at", &lock.locked_at.map(locker_protocol::timestamp))?;
        if with_requests {
            map.serialize_entry("requests", &lock.requests)?;
        }
        map.end()
    }
}

/// Holders as a map, requestor to count.
struct HoldersView<'a>(&'a crate::domain::Holders);

impl Serialize for HoldersView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (requestor, count) in self.0.iter() {
            map.serialize_entry(requestor, &count)?;
        }
        map.end()
    }
}
