//! The lock rules as seen over HTTP, and the shape of every answer.

use locker_testkit::{Client, Locker};
use serde_json::json;

use crate::{body, encode, holders};

#[test]
fn lock_then_second_key_gets_423_naming_the_holder() {
    let server = Locker::start();
    let client = Client::new();
    let (status, resp) = client.put(&server.url("/lock/prod"), &body("k1", "deploy-a"));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["response"],
        "Lock for 'prod' acquired by 'deploy-a' using key 'k1'"
    );
    assert_eq!(resp["lock"]["key"], "k1");
    assert_eq!(holders(&resp["lock"]), [("deploy-a".to_string(), 1)]);
    assert!(resp["lock"]["locked_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(resp["lock"]["revision"], 1);

    let (status, resp) = client.put(&server.url("/lock/prod"), &body("k2", "deploy-b"));
    assert_eq!(status, 423, "{resp}");
    let error = resp["error"].as_str().unwrap();
    assert!(
        error.contains("'deploy-a'") && error.contains("'k1'"),
        "{error}"
    );
    assert_eq!(resp["lock"]["key"], "k1");
}

#[test]
fn same_key_is_reentrant_and_counts_unlocks() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    for _ in 0..2 {
        assert_eq!(client.put(&url, &body("k", "a")).0, 200);
    }
    let (_, resp) = client.put(&url, &body("k", "b"));
    assert_eq!(
        holders(&resp["lock"]),
        [("a".to_string(), 2), ("b".to_string(), 1)]
    );
    let (status, resp) = client.delete(&url, &body("k", "a"));
    assert_eq!(status, 200);
    assert_eq!(
        resp["response"],
        "Lock for 'env' released by 'a' using key 'k'"
    );
    assert_eq!(
        holders(&resp["lock"]),
        [("a".to_string(), 1), ("b".to_string(), 1)]
    );
    client.delete(&url, &body("k", "a"));
    let (_, resp) = client.delete(&url, &body("k", "b"));
    assert_eq!(resp["lock"]["key"], "", "free once every count is zero");
    assert_eq!(resp["lock"]["locked_by"], json!({}));
    assert_eq!(resp["lock"]["locked_at"], json!(null));
}

#[test]
fn unlock_cases_free_wrong_key_and_no_claim() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    let (status, resp) = client.delete(&url, &body("k", "a"));
    assert_eq!(status, 200, "unlock of an unknown lock is fine: {resp}");
    assert_eq!(resp["lock"]["key"], "");

    client.put(&url, &body("k", "a"));
    let (status, resp) = client.delete(&url, &body("other", "a"));
    assert_eq!(status, 423, "{resp}");
    assert_eq!(holders(&resp["lock"]), [("a".to_string(), 1)]);

    let (status, resp) = client.delete(&url, &body("k", "nobody"));
    assert_eq!(status, 200);
    assert!(
        resp["response"]
            .as_str()
            .unwrap()
            .contains("nothing to release")
    );
    assert_eq!(holders(&resp["lock"]), [("a".to_string(), 1)]);
}

#[test]
fn requestor_field_spellings_and_default() {
    let server = Locker::start();
    let client = Client::new();
    for (i, field) in ["requestor", "lock_by", "locked_by"].iter().enumerate() {
        let url = server.url(&format!("/lock/l{i}"));
        let (status, resp) = client.put(&url, &format!(r#"{{"key":"k","{field}":"who"}}"#));
        assert_eq!(status, 200);
        assert_eq!(holders(&resp["lock"]), [("who".to_string(), 1)], "{field}");
    }
    let (_, resp) = client.put(&server.url("/lock/d"), r#"{"key":"kk"}"#);
    assert_eq!(
        holders(&resp["lock"]),
        [("kk".to_string(), 1)],
        "defaults to the key"
    );
}

#[test]
fn get_lock_and_locks_show_state_and_free_locks() {
    let server = Locker::start();
    let client = Client::new();
    let (status, never) = client.get(&server.url("/lock/never"));
    assert_eq!(status, 200);
    assert_eq!(
        never,
        json!({"key": "", "locked_by": {}, "revision": 0, "locked_at": null, "token": null, "holders": [], "queue": []})
    );
    client.put(&server.url("/lock/a"), &body("k", "r"));
    client.put(&server.url("/lock/b"), &body("k", "r"));
    client.delete(&server.url("/lock/b"), &body("k", "r"));
    let (status, all) = client.get(&server.url("/locks"));
    assert_eq!(status, 200);
    assert_eq!(all["a"]["key"], "k");
    assert_eq!(all["a"]["revision"], 1);
    assert_eq!(all["b"]["key"], "", "released locks stay listed as free");
    assert_eq!(all["b"]["locked_by"], json!({}));
    assert_eq!(all["b"]["revision"], 3);
    assert!(all.get("never").is_none(), "a GET does not create a lock");
    let (_, one) = client.get(&server.url("/lock/a"));
    assert_eq!(one, all["a"]);
}

#[test]
fn revision_counts_every_change_and_only_changes() {
    let server = Locker::start();
    let client = Client::new();
    let rev = |resp: &serde_json::Value| resp["lock"]["revision"].as_u64().unwrap();
    assert_eq!(
        rev(&client.put(&server.url("/lock/a"), &body("k", "r")).1),
        1
    );
    assert_eq!(
        rev(&client.put(&server.url("/lock/b"), &body("k", "r")).1),
        2
    );
    assert_eq!(
        rev(&client.put(&server.url("/lock/a"), &body("x", "r")).1),
        1,
        "refusal"
    );
    assert_eq!(
        rev(&client.delete(&server.url("/lock/a"), &body("k", "r")).1),
        3
    );
    assert_eq!(
        rev(&client.delete(&server.url("/lock/a"), &body("k", "r")).1),
        3,
        "no-op"
    );
    assert_eq!(
        rev(&client.put(&server.url("/lock/a"), &body("k", "r")).1),
        4
    );
}

#[test]
fn awkward_names_round_trip_through_api_and_state_file() {
    let mut server = Locker::start();
    let client = Client::new();
    let names = [
        "null",
        "~",
        "yes",
        "1e3",
        "- x",
        "#x",
        " spaced ",
        "a/b",
        "🚀 ümlaut",
        "100%",
        "a?b#c",
    ];
    for name in names {
        let url = server.url(&format!("/lock/{}", encode(name)));
        let (status, resp) = client.put(&url, &body(name, name));
        assert_eq!(status, 200, "{name:?}: {resp}");
        assert_eq!(resp["lock"]["key"], name);
    }
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    for name in names {
        assert_eq!(all[name]["key"], name, "{name:?} in {all}");
        assert_eq!(holders(&all[name]), [(name.to_string(), 1)]);
    }
    assert_eq!(all.as_object().unwrap().len(), names.len());
}

#[test]
fn bad_names_get_400_with_a_reason() {
    let server = Locker::start();
    let client = Client::new();
    let long = "x".repeat(10 * 1024);
    let cases = [
        ("/lock/a%00b", "control character"),
        ("/lock/a%0D%0Ab", "control character"),
        ("/lock/%2E%2E", "not allowed"),
        ("/lock/a/b", "%2F"),
        (&*format!("/lock/{long}"), "limit is 512 bytes"),
        ("/lock/%FF", "UTF-8"),
    ];
    for (path, expected) in cases {
        let (status, resp) = client.put(&server.url(path), &body("k", "r"));
        assert_eq!(status, 400, "{path}: {resp}");
        let error = resp["error"].as_str().unwrap();
        assert!(error.contains(expected), "{path}: {error}");
    }
}

#[test]
fn bad_bodies_get_400_naming_the_problem() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/x");
    let cases = [
        ("", "empty"),
        ("{", "not valid JSON"),
        (r#"{"key":"k","lokc_by":"r"}"#, "lokc_by"),
        (r#"{"key":7}"#, "must be a string"),
        (r#"{"locked_by":"r"}"#, "'key' is required"),
        (r#"{"key":""}"#, "must not be empty"),
    ];
    for (text, expected) in cases {
        for method in ["PUT", "DELETE"] {
            let (status, resp) = client.call(method, &url, Some(text)).unwrap();
            assert_eq!(status, 400, "{method} {text}: {resp}");
            let error = resp["error"].as_str().unwrap();
            assert!(error.contains(expected), "{method} {text}: {error}");
        }
    }
    let (_, lock) = client.get(&url);
    assert_eq!(lock["revision"], 0, "nothing changed");
}

#[test]
fn errors_are_json_with_the_right_status() {
    let server = Locker::start();
    let client = Client::new();
    let (status, resp) = client.get(&server.url("/nowhere"));
    assert_eq!(status, 404);
    assert!(resp["error"].is_string(), "{resp}");
    let (status, resp) = client
        .call("POST", &server.url("/lock/x"), Some("{}"))
        .unwrap();
    assert_eq!(status, 405);
    assert!(resp["error"].is_string(), "{resp}");
    // Declared too large: answered from the headers alone, without waiting for the body.
    let answer = raw_request(
        server.port(),
        "PUT /lock/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body is larger than 65536 bytes"}"#),
        "{answer}"
    );
    let (status, resp) = client.get(&server.url("/healthz"));
    assert_eq!((status, &resp["status"]), (200, &json!("ok")), "{resp}");
}

#[test]
fn curl_with_form_content_type_works_as_in_the_original_readme() {
    let server = Locker::start();
    let output = std::process::Command::new("curl")
        .args(["-sS", "-X", "PUT", "-d", r#"{"key":"k"}"#])
        .arg(server.url("/lock/from-curl"))
        .output()
        .expect("curl is installed");
    let resp: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        resp["response"],
        "Lock for 'from-curl' acquired by 'k' using key 'k'"
    );
}

#[test]
fn every_request_is_logged_with_method_path_status_and_duration() {
    let server = Locker::start();
    Client::new().put(&server.url("/lock/logged"), &body("k", "r"));
    let line = server.wait_for_log("PUT /lock/logged 200");
    assert!(line.trim_end().ends_with("ms"), "{line}");
}

#[test]
fn openapi_description_is_served() {
    let server = Locker::start();
    let (status, text) = Client::new().get(&server.url("/openapi.yaml"));
    assert_eq!(status, 200);
    let text = text.as_str().unwrap();
    assert!(text.starts_with("openapi: 3"), "{text}");
}

/// Sends raw bytes and returns everything the server answers until it closes or pauses.
fn raw_request(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
