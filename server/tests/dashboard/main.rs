//! The dashboard in a real browser: headless Chromium, driven over WebDriver, against the real
//! `locker` binary. Each test asserts what a person sees, and leaves screenshots in
//! `target/dashboard-screenshots/`.
//!
//! ```sh
//! cargo test -p locker-server --test dashboard
//! LOCKER_UPDATE_SCREENSHOT=1 cargo test -p locker-server --test dashboard   # and docs/dashboard.png
//! ```
//!
//! They need Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them
//! they fail, saying so, unless `LOCKER_SKIP_BROWSER_TESTS=1` lets them skip.

mod actions;
mod browser;
mod connection;
mod history;
mod layout;
mod locks;

use locker_testkit::{Client, Locker, Options};
use serde_json::{Value, json};

/// The dashboard's users: the API's credentials, which the browser is given in the URL as a
/// person would type them into its login prompt.
pub const USER: (&str, &str) = ("ops", "dashboard-pass");

/// A server that asks for [`USER`]'s credentials.
pub fn server() -> Locker {
    server_with(Options::default())
}

pub fn server_with(options: Options) -> Locker {
    Locker::start_with(options.env("AUTH_USER", USER.0).env("AUTH_PASS", USER.1))
}

/// An API client with [`USER`]'s credentials.
pub fn client() -> Client {
    Client::new().basic_auth(USER.0, USER.1)
}

/// `path` on `server`, with the credentials of `user` in the URL.
pub fn page_url(server: &Locker, path: &str, user: (&str, &str)) -> String {
    format!(
        "http://{}:{}@127.0.0.1:{}{path}",
        user.0,
        user.1,
        server.port()
    )
}

/// The owner a Concourse build sends.
pub fn build_owner(pipeline: &str, job: &str, build: u32) -> Value {
    json!({
        "team": "main",
        "pipeline": pipeline,
        "job": job,
        "build": build.to_string(),
        "build_url": format!(
            "https://ci.example.com/teams/main/pipelines/{pipeline}/jobs/{job}/builds/{build}"
        ),
    })
}

/// Takes `lock` for `requestor` with `key` over the API; the answer's LOCK.
pub fn take(server: &Locker, lock: &str, key: &str, requestor: &str, owner: Value) -> Value {
    let body = json!({"key": key, "locked_by": requestor, "ttl": "30m", "owner": owner});
    let (status, answer) = client().put(&server.url(&format!("/lock/{lock}")), &body.to_string());
    assert_eq!(status, 200, "taking {lock}: {answer}");
    answer["lock"].clone()
}

/// A lock that was taken and released: known, and free.
pub fn take_and_release(server: &Locker, lock: &str) {
    take(server, lock, "k", "someone", json!({}));
    let body = json!({"key": "k", "locked_by": "someone"}).to_string();
    let (status, answer) = client().delete(&server.url(&format!("/lock/{lock}")), &body);
    assert_eq!(status, 200, "releasing {lock}: {answer}");
}

/// Starts a request that waits in `lock`'s queue (for at most a minute) in the background.
pub fn wait_in_queue(server: &Locker, lock: &str, key: &str, requestor: &str, owner: Value) {
    let url = server.url(&format!("/lock/{lock}?wait=60s"));
    let body = json!({"key": key, "locked_by": requestor, "owner": owner}).to_string();
    std::thread::spawn(move || {
        // Ends with the test's server; its answer does not matter.
        let _ = client().call("PUT", &url, Some(&body));
    });
    let lock_url = server.url(&format!("/lock/{lock}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !client().get(&lock_url).1["queue"]
        .as_array()
        .is_some_and(|queue| queue.iter().any(|w| w["requestor"] == requestor))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{requestor} never joined the queue of {lock}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The LOCK `GET /lock/{name}` answers.
pub fn lock_state(server: &Locker, lock: &str) -> Value {
    let (status, answer) = client().get(&server.url(&format!("/lock/{lock}")));
    assert_eq!(status, 200, "{answer}");
    answer
}
