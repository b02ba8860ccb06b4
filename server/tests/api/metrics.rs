//! `GET /metrics` (issue 13): after a known set of actions, the scrape is read with the
//! Prometheus project's own text-format parser and every number is checked against what was
//! done; and it is protected like the API unless `LOCKER_METRICS_PUBLIC=true`.

use std::time::{Duration, Instant};

use locker_testkit::prometheus::Scrape;
use locker_testkit::{Client, Locker, Options};
use serde_json::{Value, json};

use crate::body;

/// The lock names of the test share this prefix, which must appear in no label.
const PREFIX: &str = "metrics-lock-";

/// The routes a request may be counted under.
const ROUTES: [&str; 16] = [
    "/",
    "/dashboard/{file}",
    "/concourse",
    "/healthz",
    "/openapi.yaml",
    "/metrics",
    "/locks",
    "/history",
    "/events",
    "/lock/{name}",
    "/lock/{name}/renew",
    "/lock/{name}/force-release",
    "/lock/{name}/reserve",
    "/lock/{name}/history",
    "/lock/{name}/queue/{id}",
    "other",
];

/// The requests of a test, counted as the test sends them.
struct Sent<'a> {
    server: &'a Locker,
    client: Client,
    gets: u32,
    total: u32,
}

impl Sent<'_> {
    fn url(&self, name: &str, rest: &str) -> String {
        self.server.url(&format!("/lock/{PREFIX}{name}{rest}"))
    }

    fn put(&mut self, name: &str, body: &str) -> (u16, Value) {
        self.total += 1;
        self.client.put(&self.url(name, ""), body)
    }

    fn delete(&mut self, name: &str, body: &str) -> (u16, Value) {
        self.total += 1;
        self.client.delete(&self.url(name, ""), body)
    }

    /// Polls `GET /lock/NAME` until `done` holds for it, for at most 10 s.
    fn get_until(&mut self, name: &str, done: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.gets += 1;
            self.total += 1;
            let (status, lock) = self.client.get(&self.url(name, ""));
            assert_eq!(status, 200, "{lock}");
            if done(&lock) {
                return;
            }
            assert!(Instant::now() < deadline, "not within 10 s: {lock}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn scrape(&mut self) -> (String, Scrape) {
        self.total += 1;
        let (status, text) = self.client.get(&self.server.url("/metrics"));
        assert_eq!(status, 200, "{text}");
        let text = text
            .as_str()
            .expect("the metrics are text, not JSON")
            .to_owned();
        let parsed = Scrape::parse(&text);
        (text, parsed)
    }
}

/// Two locks taken and refused, an unlock, a lease that ends, a force-release, a waiter
/// granted from the queue and one whose wait ran out (keeping its place): every counter and
/// gauge is exact, every histogram's count exact and its sum plausible, each request counted
/// once under its route template and no lock name in any label.
///
/// Broken on purpose (tried): counting only `Action::Lock` entries as grants in
/// `Metrics::committed`, not the `Granted` of a hand-over from the queue, makes this test fail
/// (`locker_grants_total` 4, not 5); so does observing a zero wait in `wait_for` instead of the
/// time since the request arrived (the wait sum is below the 200 ms the waiter waited).
#[test]
fn metrics_count_what_was_done() {
    let server = Locker::start();
    let mut sent = Sent {
        server: &server,
        client: Client::new(),
        gets: 0,
        total: 0,
    };

    assert_eq!(sent.put("alpha", &body("k1", "job-1")).0, 200);
    for _ in 0..2 {
        assert_eq!(sent.put("alpha", &body("k2", "job-2")).0, 423);
    }
    assert_eq!(sent.delete("alpha", &body("k1", "job-1")).0, 200);

    let leased = json!({"key": "k", "locked_by": "job-3", "ttl": "1s"}).to_string();
    assert_eq!(sent.put("lease", &leased).0, 200);
    sent.get_until("lease", |lock| lock["key"] == "");

    assert_eq!(sent.put("stuck", &body("k", "job-4")).0, 200);
    let (status, answer) = sent.client.post(
        &sent.url("stuck", "/force-release"),
        r#"{"reason": "its worker died"}"#,
    );
    sent.total += 1;
    assert_eq!(status, 200, "{answer}");

    assert_eq!(sent.put("queue", &body("k1", "job-5")).0, 200);
    let waiter = {
        let url = sent.url("queue", "?wait=5s");
        std::thread::spawn(move || Client::new().put(&url, &body("k2", "job-6")))
    };
    sent.total += 1;
    sent.get_until("queue", |lock| lock["queue"] != json!([]));
    let waited = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sent.delete("queue", &body("k1", "job-5")).0, 200);
    let (status, granted) = waiter.join().unwrap();
    assert_eq!(status, 200, "granted from the queue: {granted}");
    let waited = waited.elapsed().as_secs_f64();

    // A wait that runs out keeps its place (it has an Idempotency-Key): a waiter to count.
    let (status, refused) = Client::new()
        .header("Idempotency-Key", "metrics-waiter")
        .put(&sent.url("queue", "?wait=1ms"), &body("k3", "job-7"));
    sent.total += 1;
    assert_eq!(status, 423, "{refused}");

    let (text, scrape) = sent.scrape();
    assert!(
        !text.contains(PREFIX),
        "no lock name becomes a label value:\n{text}"
    );
    for family in &scrape.families {
        assert_ne!(family.kind, "unknown", "{} has a type", family.name);
        assert!(!family.help.is_empty(), "{} says what it is", family.name);
    }

    let exact = [
        ("locker_locks", 4.0),
        ("locker_locks_held", 1.0),
        ("locker_waiters", 1.0),
        ("locker_grants_total", 5.0),
        ("locker_refusals_total", 3.0),
        ("locker_expiries_total", 1.0),
        ("locker_force_releases_total", 1.0),
        ("locker_unavailable_total", 0.0),
    ];
    for (name, expected) in exact {
        assert_eq!(scrape.value(name, &[]), expected, "{name}");
    }
    for (name, kind) in [("locker_grants", "counter"), ("locker_locks", "gauge")] {
        assert_eq!(scrape.family(name).kind, kind, "{name}");
    }

    let wait = scrape.histogram("locker_lock_wait_seconds", &[]);
    assert_eq!(wait.count, 1.0, "one wait was granted: {wait:?}");
    assert!(
        (0.2..=waited + 0.5).contains(&wait.sum),
        "the waiter waited at least the 200 ms before the unlock, and not much more than {waited:.3} s: {wait:?}"
    );
    let held = scrape.histogram("locker_lock_held_seconds", &[]);
    assert_eq!(
        held.count, 4.0,
        "four tenures ended: unlock, expiry, force-release, hand-over: {held:?}"
    );
    assert!(
        (1.2..30.0).contains(&held.sum),
        "the lease was held for its 1 s ttl and the queue's lock for the waiter's 200 ms at least: {held:?}"
    );
    let batches = scrape.histogram("locker_commit_batch_size", &[]);
    // Lock requests, unlocks and the force-release each one request; each wait one more, and
    // the wait that ran out one more still (the end of its poll).
    assert_eq!(
        batches.sum, 12.0,
        "every request reached the writer once: {batches:?}"
    );
    let commits = scrape.histogram("locker_commit_duration_seconds", &[]);
    assert_eq!(commits.count, batches.count, "one commit per batch");
    assert!(commits.sum > 0.0, "{commits:?}");

    let requests = |labels: &[(&str, &str)]| {
        scrape
            .histogram("locker_http_request_duration_seconds", labels)
            .count
    };
    let lock = ("route", "/lock/{name}");
    assert_eq!(requests(&[lock, ("method", "PUT"), ("status", "200")]), 5.0);
    assert_eq!(requests(&[lock, ("method", "PUT"), ("status", "423")]), 3.0);
    assert_eq!(
        requests(&[lock, ("method", "DELETE"), ("status", "200")]),
        2.0
    );
    assert_eq!(
        requests(&[lock, ("method", "GET"), ("status", "200")]),
        f64::from(sent.gets)
    );
    assert_eq!(
        requests(&[
            ("route", "/lock/{name}/force-release"),
            ("method", "POST"),
            ("status", "200")
        ]),
        1.0
    );
    for sample in scrape.samples("locker_http_request_duration_seconds_count", &[]) {
        let route = sample.labels["route"].as_str();
        assert!(ROUTES.contains(&route), "{route} is a route template");
    }

    // This scrape is counted once its answer is out: the next one sees it, and every request.
    let (_, scrape) = sent.scrape();
    assert_eq!(
        requests_of(
            &scrape,
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        requests_of(&scrape, &[]),
        f64::from(sent.total - 1),
        "every request the test sent (but this scrape) is counted once"
    );
}

/// How many requests with `labels` the scrape counts.
fn requests_of(scrape: &Scrape, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples("locker_http_request_duration_seconds_count", labels)
        .map(|s| s.value)
        .sum()
}

/// With AUTH_USER set, `/metrics` needs the credentials like the API; with
/// `LOCKER_METRICS_PUBLIC=true` it needs none, and the rest of the API still does.
///
/// Broken on purpose (tried): with `/metrics` public whatever `LOCKER_METRICS_PUBLIC` says (in
/// `middleware::authenticate`), this test fails: the scrape without credentials gets 200.
#[test]
fn metrics_need_the_api_credentials_unless_public() {
    let auth = Options::default()
        .env("AUTH_USER", "ci")
        .env("AUTH_PASS", "ci-pass");
    let protected = Locker::start_with(auth.clone());
    let (status, answer) = Client::new().get(&protected.url("/metrics"));
    assert_eq!(status, 401, "no credentials, no metrics: {answer}");
    let (status, text) = Client::new()
        .basic_auth("ci", "ci-pass")
        .get(&protected.url("/metrics"));
    assert_eq!(status, 200, "{text}");
    let scrape = Scrape::parse(text.as_str().expect("text"));
    assert_eq!(
        requests_of(&scrape, &[("route", "/metrics"), ("status", "401")]),
        1.0,
        "the refused scrape is counted"
    );

    let public = Locker::start_with(auth.env("LOCKER_METRICS_PUBLIC", "true"));
    let (status, text) = Client::new().get(&public.url("/metrics"));
    assert_eq!(status, 200, "public metrics need no credentials: {text}");
    Scrape::parse(text.as_str().expect("text"));
    let (status, answer) = Client::new().get(&public.url("/locks"));
    assert_eq!(status, 401, "the API is still protected: {answer}");
}
