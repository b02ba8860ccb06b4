//! Reading requests: the lock name from the path, the body (bounded in size and time), the
//! claim in it, and the `Idempotency-Key` header. Every refusal says what is wrong.

use std::borrow::Cow;
use std::time::Duration;

use locker_protocol::{CLAIM_FIELDS, IDEMPOTENCY_KEY, json_type, names};
use poem::http::{StatusCode, header};
use poem::{Body, Request};
use serde::Deserialize;
use serde_json::Value;

use super::answer::ApiError;
use crate::domain::Claim;

/// The largest request body accepted, in bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request body once its head has arrived; a body that
/// never ends (or a Content-Length larger than what is sent) gets 408 after this.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The lock name from the raw (still percent-encoded) path.
pub(super) fn lock_name(req: &Request) -> Result<String, ApiError> {
    let segment = req.uri().path().strip_prefix("/lock/").unwrap_or_default();
    names::lock_name_from_path(segment).map_err(ApiError::bad_request)
}

/// Replaces the request's body by its bytes, read in full (at most [`MAX_BODY`]).
pub(super) async fn buffer_body(req: &mut Request) -> Result<(), ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body = req.take_body().into_bytes_limit(MAX_BODY);
    let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, body).await else {
        return Err(ApiError(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received in full within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    match read {
        Ok(bytes) => {
            req.set_body(bytes);
            Ok(())
        }
        Err(poem::error::ReadBodyError::PayloadTooLarge) => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Reads and checks a lock/unlock body, whatever its Content-Type says.
pub(super) async fn read_claim(body: Body) -> Result<Claim, ApiError> {
    let bytes = body
        .into_bytes()
        .await
        .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
    parse_claim(&bytes).map_err(ApiError::bad_request)
}

/// Parses `{"key": K, "locked_by"|"lock_by"|"requestor": R}`; the requestor defaults to the key.
pub(crate) fn parse_claim(bytes: &[u8]) -> Result<Claim, String> {
    match serde_json::from_slice::<ClaimBody>(bytes) {
        Ok(body) => body.into_claim(),
        // Anything unusual (a wrong type, an unknown or repeated field, bad JSON) goes the slow
        // way, which says exactly what is wrong.
        Err(_) => parse_claim_value(bytes),
    }
}

/// A well-formed body, read without building a `serde_json::Value` (the hot path). Fields must
/// be strings: `null` is refused here, so that the slow path can say so.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    locked_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    lock_by: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    requestor: Option<Cow<'a, str>>,
}

fn some_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Cow::<'de, str>::deserialize(d).map(Some)
}

impl<'a> ClaimBody<'a> {
    fn into_claim(self) -> Result<Claim, String> {
        names::check_text("field 'key'", &self.key)?;
        let checked = |field: &str, value: Option<Cow<'a, str>>| {
            if let Some(text) = &value {
                names::check_text(&format!("field '{field}'"), text)?;
            }
            Ok(value)
        };
        claim_from(
            self.key,
            [
                checked("locked_by", self.locked_by),
                checked("lock_by", self.lock_by),
                checked("requestor", self.requestor),
            ],
        )
    }
}

/// The claim of `key` and the requestor named by the body's `locked_by`, `lock_by` and
/// `requestor` fields (each already read and checked, in that order; the first error wins):
/// the spellings given must agree, and the requestor defaults to the key.
fn claim_from<T>(key: T, requestors: [Result<Option<T>, String>; 3]) -> Result<Claim, String>
where
    T: AsRef<str> + Into<String>,
{
    let mut requestor: Option<T> = None;
    for named in requestors {
        let Some(r) = named? else { continue };
        if requestor
            .as_ref()
            .is_some_and(|prev| prev.as_ref() != r.as_ref())
        {
            return Err(
                "locked_by, lock_by and requestor name the same thing; they disagree here".into(),
            );
        }
        requestor = Some(r);
    }
    let key: String = key.into();
    Ok(Claim {
        requestor: requestor.map_or_else(|| key.clone(), Into::into),
        key,
        request_id: None,
    })
}

/// Parses a body as a JSON value first, to explain precisely what is wrong with it.
fn parse_claim_value(bytes: &[u8]) -> Result<Claim, String> {
    let example = r#"send JSON like {"key": "my-key", "locked_by": "my-job"}"#;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("request body is empty; {example}"));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("request body is not valid JSON ({e}); {example}"))?;
    let Value::Object(fields) = value else {
        return Err(format!("request body must be a JSON object; {example}"));
    };
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !CLAIM_FIELDS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown field(s) in request body: {} (expected: {})",
            unknown.join(", "),
            CLAIM_FIELDS.join(", ")
        ));
    }
    let text = |field: &str| -> Result<Option<String>, String> {
        match fields.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => {
                names::check_text(&format!("field '{field}'"), s)?;
                Ok(Some(s.clone()))
            }
            Some(other) => Err(format!(
                "field '{field}' must be a string, not {}",
                json_type(other)
            )),
        }
    };
    let key = text("key")?.ok_or_else(|| format!("field 'key' is required; {example}"))?;
    claim_from(key, ["locked_by", "lock_by", "requestor"].map(text))
}

/// The request's `Idempotency-Key` header, if it has one: retries of one request share it, so
/// that a retry after a lost answer does not claim or release a second time.
pub(super) fn request_id(req: &Request) -> Result<Option<String>, ApiError> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "{IDEMPOTENCY_KEY} is given more than once; send one per request"
        )));
    }
    // Bytes that are not UTF-8 are not visible ASCII either: the check names them.
    let id = String::from_utf8_lossy(value.as_bytes());
    names::check_request_id(&id)
        .map_err(|e| ApiError::bad_request(format!("{IDEMPOTENCY_KEY}: {e}")))?;
    Ok(Some(id.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requestor_spellings_and_default() {
        let c = parse_claim(br#"{"key":"k"}"#).unwrap();
        assert_eq!((c.key.as_str(), c.requestor.as_str()), ("k", "k"));
        for field in ["locked_by", "lock_by", "requestor"] {
            let body = format!(r#"{{"key":"k","{field}":"r"}}"#);
            assert_eq!(parse_claim(body.as_bytes()).unwrap().requestor, "r");
        }
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let cases: [(&[u8], &str); 9] = [
            (b"", "empty"),
            (b"key=k", "not valid JSON"),
            (b"[1]", "JSON object"),
            (
                br#"{"key":"k","lokc_by":"x"}"#,
                "unknown field(s) in request body: lokc_by",
            ),
            (br#"{"key":1}"#, "'key' must be a string, not a number"),
            (br#"{"locked_by":"r"}"#, "'key' is required"),
            (br#"{"key":""}"#, "'key' must not be empty"),
            (br#"{"key":"k","lock_by":"a","locked_by":"b"}"#, "disagree"),
            (b"\xff\xfe", "not valid JSON"),
        ];
        for (body, expected) in cases {
            let err = parse_claim(body).unwrap_err();
            assert!(err.contains(expected), "{body:?}: {err}");
        }
    }

    proptest::proptest! {
        /// The fast path reads every body exactly as the slow, explaining path does: the same
        /// claim, or the same error.
        #[test]
        fn the_fast_path_agrees_with_the_slow_one(
            fields in proptest::collection::vec((0..6usize, 0..8usize), 0..6)
        ) {
            let names = ["key", "locked_by", "lock_by", "requestor", "other", "key"];
            let values = [
                json!("k"), json!("r"), json!(""), json!("a\u{0}b"), json!(null), json!(1),
                json!({"x": "y"}), json!("x".repeat(600)),
            ];
            let mut body = String::from("{");
            for (i, (n, v)) in fields.iter().enumerate() {
                if i > 0 { body.push(','); }
                body.push_str(&format!("{}:{}", json!(names[*n]), values[*v]));
            }
            body.push('}');
            proptest::prop_assert_eq!(
                parse_claim(body.as_bytes()),
                parse_claim_value(body.as_bytes()),
                "{}", body
            );
        }
    }
}
