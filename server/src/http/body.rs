//! Reading requests: the lock name from the path, the body (bounded in size and time), the
//! claim in it, and the `Idempotency-Key` header. Every refusal says what is wrong.

use std::borrow::Cow;
use std::time::Duration;

use locker_protocol::{
    CLAIM_FIELDS, IDEMPOTENCY_KEY, MAX_OWNER_BYTES, MAX_OWNER_FIELDS, MAX_OWNER_VALUE, json_type,
    names,
};
use poem::http::{StatusCode, header};
use poem::{Body, Request};
use serde::Deserialize;
use serde_json::Value;

use super::answer::ApiError;
use crate::domain::{Claim, Hold, Owner};

/// The largest request body accepted, in bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send a request body once its head has arrived; a body that
/// never ends (or a Content-Length larger than what is sent) gets 408 after this.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The lock name from the raw (still percent-encoded) path.
pub(super) fn lock_name(req: &Request) -> Result<String, ApiError> {
    let segment = req.uri().path().strip_prefix("/lock/").unwrap_or_default();
    if let Some(action) = ACTIONS.iter().find(|a| ends_with_action(segment, a)) {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("this is POST /lock/NAME/{action}"),
        ));
    }
    if segment.contains("/queue/") {
        return Err(queue_method());
    }
    if segment.ends_with("/history") {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "a lock's history is read with GET /lock/NAME/history".into(),
        ));
    }
    names::lock_name_from_path(segment).map_err(ApiError::bad_request)
}

/// The lock name of `GET /lock/{name}/history`, if the path is one.
pub(super) fn history_path(req: &Request) -> Option<Result<String, ApiError>> {
    let rest = req.uri().path().strip_prefix("/lock/")?;
    let segment = rest.strip_suffix("/history")?;
    Some(names::lock_name_from_path(segment).map_err(ApiError::bad_request))
}

/// Which page of a history: at most `limit` entries (default 100, at most 1,000), all with ids
/// below `before` (exclusive) when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HistoryPage {
    pub(super) limit: usize,
    pub(super) before: Option<u64>,
}

/// The largest id `before` may name: the largest integer JSON clients read exactly.
const MAX_ENTRY_ID: u64 = (1 << 53) - 1;

/// The most entries one history page holds.
pub(super) const MAX_HISTORY_PAGE: usize = 1000;

/// The `limit` and `before` query parameters of a history read.
pub(super) fn history_page(req: &Request) -> Result<HistoryPage, ApiError> {
    only_parameters(req, &["limit", "before"])?;
    let mut page = HistoryPage {
        limit: 100,
        before: None,
    };
    for pair in req.uri().query().unwrap_or_default().split('&') {
        if let Some(value) = pair.strip_prefix("limit=") {
            page.limit = value
                .parse()
                .ok()
                .filter(|n| (1..=MAX_HISTORY_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "query parameter 'limit' ({value:?}) must be a number from 1 to {MAX_HISTORY_PAGE}"
                    ))
                })?;
        } else if let Some(value) = pair.strip_prefix("before=") {
            page.before = Some(
                value
                    .parse()
                    .ok()
                    .filter(|id| *id <= MAX_ENTRY_ID)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "query parameter 'before' ({value:?}) must be an entry id (0 to {MAX_ENTRY_ID})"
                        ))
                    })?,
            );
        }
    }
    Ok(page)
}

fn queue_method() -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        "a place in a queue is withdrawn with DELETE /lock/NAME/queue/ID".into(),
    )
}

/// The body of a force-release: why (required), and who asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Release {
    pub(super) reason: String,
    #[serde(default, deserialize_with = "some_string")]
    pub(super) by: Option<String>,
}

/// A field that may be absent but not `null`.
fn some_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// The body of a reservation: who, why, and for how long (all but `by` required).
pub(super) struct Reservation {
    pub(super) by: Option<String>,
    pub(super) note: String,
    pub(super) ttl: Duration,
}

/// Reads a reservation body: `{"by": "alice", "note": "why", "ttl": "2h"}`.
pub(super) async fn read_reservation(body: Body) -> Result<Reservation, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stored<'a> {
        #[serde(default, deserialize_with = "some_string")]
        by: Option<String>,
        note: String,
        #[serde(borrow)]
        ttl: TtlValue<'a>,
    }
    let bytes = body
        .into_vec()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let stored: Stored<'_> = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "a reservation is {{\"by\": \"who\", \"note\": \"why\", \"ttl\": \"2h\"}} with note and ttl required: {e}"
        ))
    })?;
    check_reason("note", &stored.note)?;
    if let Some(by) = &stored.by {
        names::check_text("field 'by'", by).map_err(ApiError::bad_request)?;
    }
    let ttl = ttl_from(stored.ttl).map_err(ApiError::bad_request)?;
    Ok(Reservation {
        by: stored.by,
        note: stored.note,
        ttl,
    })
}

/// The longest reason a force-release may give, in characters.
const MAX_REASON: usize = 1024;

/// Reads a force-release body; the reason must say something.
pub(super) async fn read_release(body: Body) -> Result<Release, ApiError> {
    let bytes = body
        .into_vec()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let release: Release = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "a force-release body is {{\"reason\": \"why\", \"by\": \"who\"}} with reason required: {e}"
        ))
    })?;
    check_reason("reason", &release.reason)?;
    if let Some(by) = &release.by {
        names::check_text("field 'by'", by).map_err(ApiError::bad_request)?;
    }
    Ok(release)
}

/// Checks a reason (or a note): it says something, in at most [`MAX_REASON`] characters
/// without control characters but line breaks.
fn check_reason(field: &str, reason: &str) -> Result<(), ApiError> {
    let blank = |c: char| c <= ' ' || ('\u{7f}'..='\u{9f}').contains(&c);
    if reason.chars().all(blank) {
        return Err(ApiError::bad_request(format!(
            "field '{field}' must say why"
        )));
    }
    if reason.chars().count() > MAX_REASON || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!(
            "field '{field}' must be at most {MAX_REASON} characters, without control characters but line breaks"
        )));
    }
    Ok(())
}

/// The lock name and request id of `/lock/{name}/queue/{id}`, if the path is one.
pub(super) fn queue_path(req: &Request) -> Option<Result<(String, String), ApiError>> {
    let rest = req.uri().path().strip_prefix("/lock/")?;
    let (segment, id) = rest.split_once("/queue/")?;
    Some(queue_place(segment, id))
}

fn queue_place(segment: &str, id: &str) -> Result<(String, String), ApiError> {
    let name = names::lock_name_from_path(segment).map_err(ApiError::bad_request)?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request(
                "the request id in the path is not valid UTF-8 once percent-decoded".into(),
            )
        })?;
    names::check_request_id(&id).map_err(|e| {
        ApiError::bad_request(format!(
            "the request id in the path ({IDEMPOTENCY_KEY}): {e}"
        ))
    })?;
    Ok((name, id.into_owned()))
}

/// The `wait` query parameter of a lock request: how long it may wait in the lock's queue, as
/// digits and a unit (`ms`, `s`, `m` or `h`; none counts seconds), like `50s` or `2m`.
pub(super) fn wait_query(req: &Request) -> Result<Option<Duration>, ApiError> {
    only_parameters(req, &["wait"])?;
    let Some(query) = req.uri().query() else {
        return Ok(None);
    };
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix("wait=")) else {
        return Ok(None);
    };
    parse_wait(value).map(Some).ok_or_else(|| {
        ApiError::bad_request(format!(
            "query parameter 'wait' ({value:?}) is not a duration; write it like 50s, 2m or 500ms"
        ))
    })
}

/// Refuses query parameters other than `known`, naming them: a misspelt one would otherwise
/// be ignored without a word.
fn only_parameters(req: &Request, known: &[&str]) -> Result<(), ApiError> {
    let query = req.uri().query().unwrap_or_default();
    let unknown: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .filter(|name| !known.contains(name))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::bad_request(format!(
        "unknown query parameter(s) {:?} (expected: {})",
        unknown,
        known.join(", ")
    )))
}

fn parse_wait(value: &str) -> Option<Duration> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 10 {
        return None;
    }
    let amount: u64 = value[..digits].parse().ok()?;
    match &value[digits..] {
        "ms" => Some(Duration::from_millis(amount)),
        "" | "s" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_secs(amount * 60)),
        "h" => Some(Duration::from_secs(amount * 3600)),
        _ => None,
    }
}

/// The actions of `POST /lock/{name}/{action}`.
pub(super) const ACTIONS: [&str; 3] = ["renew", "force-release", "reserve"];

/// True when `path` ends with `/{action}` (without building that string: this runs on every
/// request).
pub(super) fn ends_with_action(path: &str, action: &str) -> bool {
    path.strip_suffix(action)
        .is_some_and(|rest| rest.ends_with('/'))
}

/// The lock name and action of `POST /lock/{name}/{action}`.
pub(super) fn lock_action(req: &Request) -> Result<(String, &str), ApiError> {
    let rest = req.uri().path().strip_prefix("/lock/").unwrap_or_default();
    if rest.contains("/queue/") {
        return Err(queue_method());
    }
    if rest.ends_with("/history") {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "a lock's history is read with GET /lock/NAME/history".into(),
        ));
    }
    let Some((segment, action)) = rest.rsplit_once('/') else {
        return Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST needs an action: POST /lock/NAME/renew".into(),
        ));
    };
    let name = names::lock_name_from_path(segment).map_err(ApiError::bad_request)?;
    Ok((name, action))
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

/// Parses `{"key": K, "locked_by"|"lock_by"|"requestor": R, "ttl": D, "owner": {...}}`; the
/// requestor defaults to the key.
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
    #[serde(borrow, default, deserialize_with = "some_ttl")]
    ttl: Option<TtlValue<'a>>,
    #[serde(default, deserialize_with = "some_owner")]
    owner: Option<Owner>,
    #[serde(borrow, default, deserialize_with = "some_text")]
    hold: Option<Cow<'a, str>>,
}

/// A `ttl` as sent: a duration string or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum TtlValue<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Seconds(f64),
}

fn some_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Cow::<'de, str>::deserialize(d).map(Some)
}

fn some_ttl<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TtlValue<'de>>, D::Error> {
    TtlValue::deserialize(d).map(Some)
}

fn some_owner<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Owner>, D::Error> {
    Owner::deserialize(d).map(Some)
}

/// Reads a `ttl`: more than zero, as a duration string (`90s`, `30m`, `2h`, `1h 30m`) or a
/// number of seconds.
fn ttl_from(value: TtlValue<'_>) -> Result<Duration, String> {
    let hint = "send a duration like \"90s\", \"30m\" or \"1h 30m\", or a number of seconds";
    let ttl = match value {
        TtlValue::Text(text) if text.trim().is_empty() => {
            return Err(format!("field 'ttl' is empty; {hint}"));
        }
        TtlValue::Text(text) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("field 'ttl' ({text:?}) is not a duration ({e}); {hint}"))?,
        TtlValue::Seconds(seconds) if seconds > 0.0 => Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("field 'ttl' ({seconds} seconds) is too large"))?,
        TtlValue::Seconds(seconds) => {
            return Err(format!(
                "field 'ttl' must be more than zero, not {seconds}; {hint}"
            ));
        }
    };
    if ttl.is_zero() {
        return Err(format!("field 'ttl' must be more than zero; {hint}"));
    }
    Ok(ttl)
}

/// Checks an `owner`: at most [`MAX_OWNER_FIELDS`] fields, values of at most
/// [`MAX_OWNER_VALUE`] bytes without control characters (values reach messages and logs; names
/// stay in JSON, escaped), at most [`MAX_OWNER_BYTES`] in all.
fn owner_from(owner: Owner) -> Result<Owner, String> {
    if owner.len() > MAX_OWNER_FIELDS {
        return Err(format!(
            "field 'owner' has {} fields; the limit is {MAX_OWNER_FIELDS}",
            owner.len()
        ));
    }
    let bytes: usize = owner.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_OWNER_BYTES {
        return Err(format!(
            "field 'owner' is {bytes} bytes long (names and values); the limit is {MAX_OWNER_BYTES}"
        ));
    }
    for (name, value) in &owner {
        if value.len() > MAX_OWNER_VALUE {
            return Err(format!(
                "field 'owner.{name}' is {} bytes long; the limit is {MAX_OWNER_VALUE} bytes",
                value.len()
            ));
        }
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(format!(
                "field 'owner.{name}' contains the control character {c:?}; control characters are not allowed"
            ));
        }
    }
    Ok(owner)
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
        let claim = claim_from(
            self.key,
            [
                checked("locked_by", self.locked_by),
                checked("lock_by", self.lock_by),
                checked("requestor", self.requestor),
            ],
        )?;
        Ok(Claim {
            ttl: self.ttl.map(ttl_from).transpose()?,
            owner: self.owner.map(owner_from).transpose()?,
            hold: self.hold.as_deref().map(hold_from).transpose()?,
            ..claim
        })
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
    let requestor = requestor.map_or_else(|| key.clone(), Into::into);
    Ok(Claim::new(key, requestor))
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
    let claim = claim_from(key, ["locked_by", "lock_by", "requestor"].map(text))?;
    let ttl = match fields.get("ttl") {
        None => None,
        Some(Value::String(s)) => Some(ttl_from(TtlValue::Text(Cow::Borrowed(s)))?),
        Some(Value::Number(n)) => {
            Some(ttl_from(TtlValue::Seconds(n.as_f64().unwrap_or(f64::NAN)))?)
        }
        Some(other) => {
            return Err(format!(
                "field 'ttl' must be a duration like \"30m\" or a number of seconds, not {}",
                json_type(other)
            ));
        }
    };
    let owner = match fields.get("owner") {
        None => None,
        Some(Value::Object(map)) => {
            let mut owner = Owner::new();
            for (name, value) in map {
                let Value::String(text) = value else {
                    return Err(format!(
                        "field 'owner.{name}' must be a string, not {}",
                        json_type(value)
                    ));
                };
                owner.insert(name.clone(), text.clone());
            }
            Some(owner_from(owner)?)
        }
        Some(other) => {
            return Err(format!(
                "field 'owner' must be an object of strings, not {}",
                json_type(other)
            ));
        }
    };
    let hold = match fields.get("hold") {
        None => None,
        Some(Value::String(s)) => Some(hold_from(s)?),
        Some(other) => {
            return Err(format!(
                "field 'hold' must be \"build\" or \"until_unlocked\", not {}",
                json_type(other)
            ));
        }
    };
    Ok(Claim {
        ttl,
        owner,
        hold,
        ..claim
    })
}

/// Reads a `hold`: `build` or `until_unlocked`.
fn hold_from(name: &str) -> Result<Hold, String> {
    Hold::parse(name)
        .ok_or_else(|| format!("field 'hold' ({name:?}) must be \"build\" or \"until_unlocked\""))
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
    fn waits_are_digits_and_a_unit() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(parse_wait("50s"), secs(50));
        assert_eq!(parse_wait("50"), secs(50));
        assert_eq!(parse_wait("2m"), secs(120));
        assert_eq!(parse_wait("1h"), secs(3600));
        assert_eq!(parse_wait("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_wait("0"), secs(0));
        for bad in ["", "s", "-1s", "1.5s", "1 m", "5d", "12345678901s", "50 s"] {
            assert_eq!(parse_wait(bad), None, "{bad:?}");
        }
    }

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
            fields in proptest::collection::vec((0..9usize, 0..15usize), 0..6)
        ) {
            let names = ["key", "locked_by", "lock_by", "requestor", "other", "key", "ttl", "owner", "hold"];
            let values = [
                json!("k"), json!("r"), json!(""), json!("a\u{0}b"), json!(null), json!(1),
                json!({"x": "y"}), json!("x".repeat(600)), json!("90s"), json!(-1.5),
                json!("1h 30m"), json!({"job": "deploy", "build": "42"}), json!({"n": 1}),
                json!("build"), json!("until_unlocked"),
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
