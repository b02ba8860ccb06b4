//! The PostgreSQL backend as only it can be tested: several servers on one database, the
//! database going away and coming back. (The rest of this suite runs against it too, with
//! `LOCKER_TEST_BACKEND=postgres`.)

use locker_testkit::postgres::{self, Postgres};
use locker_testkit::{Client, Locker, Options};

use crate::body;

fn on(url: &str) -> Options {
    Options::default().env("LOCKER_DATABASE_URL", url)
}

#[test]
fn a_lock_taken_on_one_server_is_held_on_the_other_and_survives_their_restart() {
    let url = postgres::shared().create_database();
    let mut a = Locker::start_with(on(&url));
    let mut b = Locker::start_with(on(&url));
    let client = Client::new();
    let (status, lock) = client.put(&a.url("/lock/env"), &body("k1", "build-1"));
    assert_eq!(status, 200, "{lock}");
    let token = lock["lock"]["token"].as_u64().expect("a token");

    let (status, refused) = client.put(&b.url("/lock/env"), &body("k2", "build-2"));
    assert_eq!(
        status, 423,
        "server B must refuse a lock held through server A: {refused}"
    );

    a.kill();
    b.restart();
    let (status, lock) = client.get(&b.url("/lock/env"));
    assert_eq!(status, 200);
    assert_eq!(lock["key"], "k1", "{lock}");
    let (status, _) = client.delete(&b.url("/lock/env"), &body("k1", "build-1"));
    assert_eq!(status, 200);
    let (status, lock) = client.put(&b.url("/lock/env"), &body("k2", "build-2"));
    assert_eq!(status, 200, "{lock}");
    assert!(
        lock["lock"]["token"].as_u64().expect("a token") > token,
        "tokens only grow: {lock}"
    );
}

#[test]
fn a_server_without_its_database_answers_503_and_recovers_by_itself() {
    let pg = Postgres::start();
    let url = pg.create_database();
    let locker = Locker::start_with(on(&url));
    let client = Client::new();
    assert_eq!(client.put(&locker.url("/lock/a"), &body("k", "r")).0, 200);
    pg.stop();
    let (status, error) = client.put(&locker.url("/lock/b"), &body("k", "r"));
    assert_eq!(status, 503, "{error}");
    assert!(
        error["error"].as_str().unwrap_or("").contains("database"),
        "{error}"
    );
    let (status, health) = client.get(&locker.url("/healthz"));
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["database"], "unreachable", "{health}");
    let (status, lock) = client.get(&locker.url("/lock/a"));
    assert_eq!(
        (status, lock["key"].as_str()),
        (200, Some("k")),
        "reads are still answered"
    );

    pg.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, _) = client.put(&locker.url("/lock/b"), &body("k", "r"));
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery: still {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (status, health) = client.get(&locker.url("/healthz"));
    assert_eq!(
        (status, &health["database"]),
        (200, &"ok".into()),
        "{health}"
    );
}
