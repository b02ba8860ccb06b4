//! What a lock name, key, requestor or request id may be, and how a lock name travels in a
//! URL path segment.
//!
//! Names arrive percent-encoded in a URL path segment; keys and requestors in a JSON body.
//! All three are compared byte for byte. Control characters are refused because they break
//! log lines and terminals, and `.`/`..` because URL libraries resolve them away before the
//! request is sent, so such a lock could never be addressed reliably.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// The longest lock name, key or requestor, in bytes.
pub const MAX_LEN: usize = 512;

/// The longest request id (`Idempotency-Key`), in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 255;

/// Characters a path segment keeps as they are: RFC 3986 "unreserved" but for `.`, which is
/// encoded so that a name made of dots is never taken for a `.` or `..` segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// A lock name percent-encoded as one URL path segment (`a/b` becomes `a%2Fb`).
pub fn encode_segment(name: &str) -> String {
    utf8_percent_encode(name, PATH_SEGMENT).to_string()
}

/// Decodes and checks the lock name in a URL path segment (the part after `/lock/`).
pub fn lock_name_from_path(segment: &str) -> Result<String, String> {
    if segment.contains('/') {
        return Err(format!(
            "lock name '{segment}' contains '/': send a slash in a lock name as %2F"
        ));
    }
    let decoded = percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| "lock name is not valid UTF-8 once percent-decoded".to_string())?;
    if decoded == "." || decoded == ".." {
        return Err(format!(
            "lock name '{decoded}' is not allowed: URL clients remove '.' and '..' segments"
        ));
    }
    check_text("lock name", &decoded)?;
    Ok(decoded.into_owned())
}

/// Checks a lock name, key or requestor: non-empty, at most [`MAX_LEN`] bytes, no control
/// characters. `what` names the value in the message.
pub fn check_text(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_LEN {
        return Err(format!(
            "{what} is {} bytes long; the limit is {MAX_LEN} bytes",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} contains the control character {:?}; control characters are not allowed",
            c
        ));
    }
    Ok(())
}

/// Checks a request id: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII characters, such as a UUID.
pub fn check_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_LEN {
        return Err(format!(
            "request id is {} bytes long; it must be 1 to {MAX_REQUEST_ID_LEN} bytes",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "request id '{}' may contain visible ASCII characters only (no spaces), such as a UUID",
            id.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_visible_ascii_of_bounded_length() {
        assert!(check_request_id("0b6c1f1e-8a5e-4f6e-9a39-0d2f6c1e9b7a").is_ok());
        assert!(check_request_id(&"x".repeat(MAX_REQUEST_ID_LEN)).is_ok());
        for bad in ["", "a b", "tab\t", "ü", &"x".repeat(MAX_REQUEST_ID_LEN + 1)] {
            assert!(check_request_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percent_encoded_names_are_decoded() {
        assert_eq!(lock_name_from_path("a%2Fb").unwrap(), "a/b");
        assert_eq!(lock_name_from_path("%20spaced%20").unwrap(), " spaced ");
        assert_eq!(
            lock_name_from_path("%C3%BCmlaut%20%F0%9F%9A%80").unwrap(),
            "ümlaut 🚀"
        );
        assert_eq!(lock_name_from_path("bosh%2520x").unwrap(), "bosh%20x");
    }

    #[test]
    fn every_name_survives_encoding_as_one_segment() {
        for name in [
            "a/b",
            "..x",
            "a.b",
            " spaced ",
            "50%",
            "ümlaut 🚀",
            "a?b#c",
            "~_-",
        ] {
            let segment = encode_segment(name);
            assert!(!segment.contains(['/', '?', '#', '.']), "{segment}");
            assert_eq!(lock_name_from_path(&segment).unwrap(), name);
        }
        assert_eq!(encode_segment("a/b.c"), "a%2Fb%2Ec");
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let cases = [
            ("a/b", "%2F"),
            ("", "must not be empty"),
            ("%00", "control character"),
            ("a%0D%0Ab", "control character"),
            ("..", "not allowed"),
            ("%2E", "not allowed"),
            ("%FF", "UTF-8"),
        ];
        for (input, expected) in cases {
            let err = lock_name_from_path(input).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let long = "x".repeat(MAX_LEN + 1);
        assert!(
            lock_name_from_path(&long)
                .unwrap_err()
                .contains("limit is 512")
        );
        assert!(lock_name_from_path(&"x".repeat(MAX_LEN)).is_ok());
    }
}
