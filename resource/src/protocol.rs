//! The Concourse resource protocol: what `check`, `in` and `out` read on stdin and print on stdout.
//!
//! Concourse sends one JSON object on stdin (`source`, and `version` / `params` where they apply)
//! and parses all of stdout as one JSON document: a list of versions for `check`, a version with
//! metadata for `in` and `out`. Versions are objects of strings and metadata values are strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::describe_type;

/// A version of the resource: an object of strings. Ours is `{"revision": "<n>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(BTreeMap<String, String>);

impl Version {
    /// The version naming a lock's revision on the server.
    pub fn revision(revision: u64) -> Self {
        Self(BTreeMap::from([(
            "revision".to_owned(),
            revision.to_string(),
        )]))
    }

    /// The fields of the version.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Reads a version sent by Concourse: a non-empty object whose values are strings.
    pub fn from_json(value: &Value) -> Result<Self, ProtocolError> {
        let Value::Object(map) = value else {
            return Err(ProtocolError::BadVersion(format!(
                "got {}",
                describe_type(value)
            )));
        };
        if map.is_empty() {
            return Err(ProtocolError::BadVersion("got an empty object".to_owned()));
        }
        let mut fields = BTreeMap::new();
        for (name, value) in map {
            let Value::String(text) = value else {
                return Err(ProtocolError::BadVersion(format!(
                    "version.{name} is {}",
                    describe_type(value)
                )));
            };
            fields.insert(name.clone(), text.clone());
        }
        Ok(Self(fields))
    }
}

/// One line of metadata shown in the Concourse UI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataField {
    /// What the value is.
    pub name: String,
    /// The value, always a string.
    pub value: String,
}

impl MetadataField {
    /// A metadata line.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// What `in` and `out` print: the version they produced and metadata about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutput {
    /// The version fetched (`in`) or created (`out`).
    pub version: Version,
    /// Metadata about the lock, as strings.
    pub metadata: Vec<MetadataField>,
}

/// The parts of a request on stdin, each still raw JSON; the configuration is validated by
/// [`crate::config`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `source`: `Value::Null` when absent.
    pub source: Value,
    /// `version`: `None` when absent or null.
    pub version: Option<Version>,
    /// `params`: `Value::Null` when absent.
    pub params: Value,
}

impl Request {
    /// Parses what Concourse wrote on stdin.
    ///
    /// Other top-level fields are ignored: they are Concourse's, not the pipeline author's, and a
    /// newer Concourse may add some.
    pub fn from_stdin(input: &str) -> Result<Self, ProtocolError> {
        let value: Value =
            serde_json::from_str(input).map_err(|err| ProtocolError::NotJson(err.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(ProtocolError::NotAnObject(describe_type(&value)));
        };
        let version = match take(&mut map, "version") {
            Value::Null => None,
            value => Some(Version::from_json(&value)?),
        };
        Ok(Self {
            source: take(&mut map, "source"),
            version,
            params: take(&mut map, "params"),
        })
    }
}

fn take(map: &mut Map<String, Value>, key: &str) -> Value {
    map.remove(key).unwrap_or(Value::Null)
}

/// stdin did not hold what Concourse sends.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// stdin is not JSON at all.
    #[error("stdin is not JSON ({0}); Concourse sends {{\"source\": {{...}}, ...}}")]
    NotJson(String),
    /// stdin is JSON but not an object.
    #[error("stdin must be a JSON object like {{\"source\": {{...}}, ...}} (got {0})")]
    NotAnObject(String),
    /// The version is not an object of strings.
    #[error("version must be a non-empty object of strings like {{\"revision\": \"3\"}} ({0})")]
    BadVersion(String),
    /// `in` was run without a version.
    #[error("no version given: in needs the version to fetch, like {{\"revision\": \"3\"}}")]
    NoVersion,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_a_first_check_without_version() {
        let request = Request::from_stdin(r#"{"source": {"lock_name": "x"}}"#).unwrap();
        assert_eq!(request.source, json!({"lock_name": "x"}));
        assert_eq!(request.version, None);
        assert_eq!(request.params, Value::Null);

        let request = Request::from_stdin(r#"{"source": {}, "version": null}"#).unwrap();
        assert_eq!(request.version, None);
    }

    #[test]
    fn reads_version_and_params() {
        let request = Request::from_stdin(
            r#"{"source": {}, "version": {"revision": "4"}, "params": {"a": 1}}"#,
        )
        .unwrap();
        assert_eq!(request.version, Some(Version::revision(4)));
        assert_eq!(request.params, json!({"a": 1}));
    }

    #[test]
    fn rejects_what_concourse_would_not_send() {
        let message = |input: &str| Request::from_stdin(input).unwrap_err().to_string();
        assert!(
            message("").starts_with("stdin is not JSON"),
            "{}",
            message("")
        );
        assert_eq!(
            message("[1]"),
            "stdin must be a JSON object like {\"source\": {...}, ...} (got a list)"
        );
        assert_eq!(
            message(r#"{"version": {"revision": 4}}"#),
            "version must be a non-empty object of strings like {\"revision\": \"3\"} \
             (version.revision is a number)"
        );
        assert_eq!(
            message(r#"{"version": {}}"#),
            "version must be a non-empty object of strings like {\"revision\": \"3\"} (got an empty object)"
        );
        assert_eq!(
            message(r#"{"version": "4"}"#),
            "version must be a non-empty object of strings like {\"revision\": \"3\"} (got a string)"
        );
    }

    #[test]
    fn output_serializes_as_concourse_expects() {
        let output = StepOutput {
            version: Version::revision(12),
            metadata: vec![MetadataField::new("lock", "prod")],
        };
        assert_eq!(
            serde_json::to_value(&output).unwrap(),
            json!({"version": {"revision": "12"}, "metadata": [{"name": "lock", "value": "prod"}]})
        );
    }
}
