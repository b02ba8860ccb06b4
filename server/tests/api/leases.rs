//! Leases, fencing tokens and owners (issue 11) on the real binary: short ttls and real time.

use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use locker_testkit::{Client, Locker, Options};
use serde_json::{Value, json};

fn lock_body(key: &str, requestor: &str, extra: Value) -> String {
    let mut body = json!({"key": key, "locked_by": requestor});
    for (k, v) in extra.as_object().expect("extra fields").iter() {
        body[k] = v.clone();
    }
    body.to_string()
}

/// Polls `GET /lock/NAME` until `done` holds for it, for at most `within`.
fn wait_for(server: &Locker, name: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, lock) = Client::new().get(&server.url(&format!("/lock/{name}")));
        if done(&lock) {
            return lock;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {lock}");
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_lease_ends_at_its_ttl_and_its_expiry_takes_a_revision() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    let (status, answer) = client.put(&url, &lock_body("k", "job", json!({"ttl": "2s"})));
    assert_eq!(status, 200, "{answer}");
    let lock = &answer["lock"];
    assert_eq!(lock["revision"], 1);
    assert_eq!(lock["token"], 1);
    let holder = &lock["holders"][0];
    assert_eq!(
        (&holder["requestor"], &holder["count"]),
        (&json!("job"), &json!(1))
    );
    assert!(holder["expires_at"].is_string(), "{holder}");

    let (_, held) = client.get(&url);
    assert_eq!(held["key"], "k", "held before its deadline");
    let freed = wait_for(&server, "env", Duration::from_secs(6), |l| {
        l["revision"] == 2
    });
    assert_eq!(
        freed,
        json!({"key": "", "locked_by": {}, "revision": 2, "locked_at": null, "token": null, "holders": [], "queue": []}),
        "the expiry is a change with the next revision"
    );
    let (status, answer) = client.put(&url, &lock_body("other", "job-2", json!({})));
    assert_eq!(status, 200, "another key takes it: {answer}");
    assert_eq!(
        answer["lock"]["token"], 3,
        "a greater token than the expired tenure's"
    );
}

#[test]
fn a_read_never_shows_a_claim_past_its_deadline() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    let (_, answer) = client.put(&url, &lock_body("k", "job", json!({"ttl": 0.3})));
    let expires_at = answer["lock"]["holders"][0]["expires_at"].as_str().unwrap();
    let expires_at = humantime::parse_rfc3339(expires_at).unwrap();
    // Read as fast as we can around the deadline (the server and this test share a clock):
    // a read sent after it may not show the claim, committed expiry or not.
    let mut reads_after = 0;
    while SystemTime::now() < expires_at + Duration::from_millis(600) {
        let sent = SystemTime::now();
        let (_, lock) = client.get(&url);
        let (_, all) = client.get(&server.url("/locks"));
        if sent >= expires_at {
            reads_after += 1;
            assert_eq!(lock["key"], "", "GET /lock/env after the deadline: {lock}");
            assert_eq!(
                all["env"]["key"], "",
                "GET /locks after the deadline: {all}"
            );
        }
    }
    assert!(reads_after > 0);
}

#[test]
fn renewing_moves_the_deadline_and_keeps_the_revision() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    let renew = server.url("/lock/env/renew");
    client.put(&url, &lock_body("k", "job", json!({"ttl": "2s"})));
    let (status, answer) = client.post(&renew, &lock_body("k", "job", json!({"ttl": "5s"})));
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["response"]
            .as_str()
            .unwrap()
            .contains("renewed by 'job'"),
        "{answer}"
    );
    assert_eq!(
        answer["lock"]["revision"], 1,
        "a renewal keeps the lock's revision"
    );
    sleep(Duration::from_millis(2500));
    let (_, lock) = client.get(&url);
    assert_eq!(lock["key"], "k", "still held after the first ttl: {lock}");

    let (status, answer) = client.post(&renew, &lock_body("other", "x", json!({"ttl": "3s"})));
    assert_eq!(status, 423, "another key: {answer}");

    wait_for(&server, "env", Duration::from_secs(6), |l| l["key"] == "");
    let (status, answer) = client.post(&renew, &lock_body("k", "job", json!({"ttl": "3s"})));
    assert_eq!(status, 409, "expired: {answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("expired or was never taken"), "{message}");
    assert_eq!(
        answer["lock"]["key"], "",
        "the answer shows the lock: {answer}"
    );
}

#[test]
fn bad_ttls_and_owners_are_refused_with_the_reason() {
    let server = Locker::start_with(Options::default().env("LOCKER_MAX_TTL", "1h"));
    let client = Client::new();
    let url = server.url("/lock/env");
    let too_many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("f{i}"), json!("v"))).collect();
    let cases = [
        (json!({"ttl": 0}), "more than zero"),
        (json!({"ttl": -5}), "more than zero"),
        (json!({"ttl": "0s"}), "more than zero"),
        (json!({"ttl": ""}), "'ttl' is empty"),
        (json!({"ttl": "soon"}), "not a duration"),
        (json!({"ttl": null}), "'ttl' must be a duration"),
        (
            json!({"ttl": "2h"}),
            "more than this server allows (1h, LOCKER_MAX_TTL)",
        ),
        (
            json!({"owner": (0..16).map(|i| (format!("{i:0>100}"), json!("v".repeat(192)))).collect::<serde_json::Map<_, _>>()}),
            "the limit is 4096",
        ),
        (json!({"owner": "me"}), "'owner' must be an object"),
        (
            json!({"owner": {"build": 42}}),
            "'owner.build' must be a string",
        ),
        (json!({"owner": too_many}), "the limit is 16"),
        (
            json!({"owner": {"note": "x".repeat(193)}}),
            "the limit is 192 bytes",
        ),
    ];
    for (extra, expected) in cases {
        let (status, answer) = client.put(&url, &lock_body("k", "r", extra.clone()));
        assert_eq!(status, 400, "{extra}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{extra}: expected {expected:?} in {message:?}"
        );
    }
    let (status, answer) = client.post(
        &server.url("/lock/env/renew"),
        &lock_body("k", "r", json!({})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("'ttl' is required to renew")
    );
    let (_, lock) = client.get(&url);
    assert_eq!(lock["revision"], 0, "nothing refused was stored: {lock}");
}

#[test]
fn the_owner_is_shown_and_names_the_build_in_a_refusal() {
    let server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/prod");
    let owner = json!({
        "team": "main", "pipeline": "main", "job": "deploy", "build": "42",
        "build_url": "https://ci.example.com/teams/main/pipelines/main/jobs/deploy/builds/42",
    });
    client.put(&url, &lock_body("K", "deploy-job", json!({"owner": owner})));
    let (_, lock) = client.get(&url);
    assert_eq!(lock["holders"][0]["owner"], owner);
    let (status, answer) = client.put(&url, &lock_body("K2", "other", json!({})));
    assert_eq!(status, 423);
    assert_eq!(
        answer["error"],
        "Lock for 'prod' is held by 'main/deploy #42 (https://ci.example.com/teams/main/pipelines/main/jobs/deploy/builds/42)' using key 'K', not 'K2'"
    );
}

#[test]
fn claims_whose_lease_ended_while_the_server_was_down_are_released_at_start_up() {
    let mut server = Locker::start();
    let client = Client::new();
    client.put(
        &server.url("/lock/short"),
        &lock_body("k", "r", json!({"ttl": "2s"})),
    );
    client.put(
        &server.url("/lock/long"),
        &lock_body("k", "r", json!({"ttl": "1h"})),
    );
    server.stop();
    sleep(Duration::from_millis(2500));
    server.restart();
    let (_, all) = client.get(&server.url("/locks"));
    assert_eq!(
        (&all["short"]["key"], &all["short"]["revision"]),
        (&json!(""), &json!(3)),
        "released, and committed, before the first answer: {all}"
    );
    assert_eq!(all["long"]["key"], "k", "{all}");
    assert!(
        server
            .log()
            .contains("released the claims whose lease ended while the server was down")
    );
}

#[test]
fn tokens_survive_sigkill_and_keep_growing() {
    let mut server = Locker::start();
    let client = Client::new();
    let url = server.url("/lock/env");
    let (_, answer) = client.put(&url, &lock_body("k", "r", json!({})));
    let token = answer["lock"]["token"].as_u64().unwrap();
    server.kill();
    server.restart();
    let (_, lock) = client.get(&url);
    assert_eq!(lock["token"], token, "{lock}");
    client.delete(&url, &lock_body("k", "r", json!({})));
    let (_, answer) = client.put(&url, &lock_body("k2", "r2", json!({})));
    assert!(
        answer["lock"]["token"].as_u64().unwrap() > token,
        "{answer}"
    );
}

#[test]
fn the_default_ttl_applies_to_claims_without_one() {
    let server = Locker::start_with(Options::default().env("LOCKER_DEFAULT_TTL", "1s"));
    let client = Client::new();
    let (_, answer) = client.put(&server.url("/lock/env"), &lock_body("k", "r", json!({})));
    assert!(
        answer["lock"]["holders"][0]["expires_at"].is_string(),
        "{answer}"
    );
    wait_for(&server, "env", Duration::from_secs(4), |l| {
        l["revision"] == 2
    });
}
