use super::*;
use serde_json::json;

fn source_error(value: Value) -> String {
    Source::from_json(&value).unwrap_err().to_string()
}

fn params_error(value: Value) -> String {
    OutParams::from_json(&value).unwrap_err().to_string()
}

fn minimal_source() -> Value {
    json!({"locker_uri": "https://locker.example.com", "lock_name": "prod"})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[test]
fn minimal_source_gets_defaults() {
    let source = Source::from_json(&minimal_source()).unwrap();
    assert_eq!(source.locker_uri, "https://locker.example.com");
    assert_eq!(source.lock, LockTarget::Name("prod".to_owned()));
    assert_eq!(source.credentials, None);
    assert_eq!(source.ca_cert, None);
    assert!(!source.skip_ssl_validation);
    assert_eq!(
        source.retry,
        RetryDelays {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30)
        }
    );
}

#[test]
fn full_source_is_read() {
    let source = Source::from_json(&json!({
        "locker_uri": "http://10.0.0.1:3000/",
        "bosh_lock": "https://director:25555",
        "username": "ci",
        "password": "secret",
        "skip_ssl_validation": true,
        "retry_delay": "50ms",
        "max_retry_delay": "2m",
        "ca_cert": null,
    }))
    .unwrap();
    assert_eq!(source.locker_uri, "http://10.0.0.1:3000");
    assert_eq!(
        source.lock,
        LockTarget::BoshDirector("https://director:25555".to_owned())
    );
    assert_eq!(
        source.credentials,
        Some(Credentials {
            username: "ci".to_owned(),
            password: "secret".to_owned()
        })
    );
    assert!(source.skip_ssl_validation);
    assert_eq!(source.retry.first, Duration::from_millis(50));
    assert_eq!(source.retry.max, Duration::from_secs(120));
}

#[test]
fn password_is_not_in_debug_output() {
    let source = Source::from_json(&with(
        with(minimal_source(), "username", json!("ci")),
        "password",
        json!("hunter2"),
    ))
    .unwrap();
    let debug = format!("{source:?}");
    assert!(
        !debug.contains("hunter2"),
        "the password leaked into {debug}"
    );
}

#[test]
fn a_typo_in_source_is_named_with_the_known_keys() {
    let value = json!({"locker_uri": "https://l", "lock_nmae": "prod"});
    assert_eq!(
        source_error(value),
        "source.lock_nmae is not a known key (expected one of: locker_uri, lock_name, bosh_lock, \
         username, password, ca_cert, skip_ssl_validation, retry_delay, max_retry_delay, ttl, \
         hold)"
    );
}

#[test]
fn missing_or_malformed_source_is_explained() {
    assert_eq!(
        source_error(Value::Null),
        "source is missing (it needs at least locker_uri and lock_name)"
    );
    assert_eq!(
        source_error(json!("https://l")),
        "source must be an object of settings (got a string)"
    );
    assert_eq!(
        source_error(without(minimal_source(), "locker_uri")),
        "source.locker_uri is missing (the URL of the locker server, like https://locker.example.com)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "locker_uri", Value::Null)),
        "source.locker_uri is missing (the URL of the locker server, like https://locker.example.com)"
    );
}

#[test]
fn wrong_types_in_source_are_named() {
    assert_eq!(
        source_error(with(minimal_source(), "locker_uri", json!(3000))),
        "source.locker_uri must be a string (got a number)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "lock_name", json!(["a"]))),
        "source.lock_name must be a string (got a list)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "skip_ssl_validation", json!("yes"))),
        "source.skip_ssl_validation must be true or false (got a string)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "retry_delay", json!(5))),
        "source.retry_delay must be a duration like 500ms, 10s, 5m or 1h (got a number)"
    );
    assert_eq!(
        source_error(with(
            with(minimal_source(), "username", json!("ci")),
            "password",
            json!(1234)
        )),
        "source.password must be a string (got a number)"
    );
}

#[test]
fn lock_name_and_bosh_lock_exclude_each_other() {
    assert_eq!(
        source_error(with(minimal_source(), "bosh_lock", json!("https://d"))),
        "source has both lock_name and bosh_lock: set exactly one of them"
    );
    assert_eq!(
        source_error(without(minimal_source(), "lock_name")),
        "source needs one of lock_name (the lock's name) or bosh_lock \
         (a BOSH director URL whose name is the lock's name)"
    );
}

#[test]
fn username_and_password_come_together() {
    assert_eq!(
        source_error(with(minimal_source(), "username", json!("ci"))),
        "source.username is set but source.password is missing: set both or neither"
    );
    assert_eq!(
        source_error(with(minimal_source(), "password", json!("p"))),
        "source.password is set but source.username is missing: set both or neither"
    );
}

#[test]
fn bad_values_in_source_are_explained() {
    assert_eq!(
        source_error(with(minimal_source(), "locker_uri", json!("locker:3000"))),
        "source.locker_uri must be an http:// or https:// URL like https://locker.example.com \
         (got \"locker:3000\")"
    );
    assert_eq!(
        source_error(with(minimal_source(), "locker_uri", json!("https://"))),
        "source.locker_uri must be an http:// or https:// URL like https://locker.example.com \
         (got \"https://\")"
    );
    assert_eq!(
        source_error(without(
            with(minimal_source(), "bosh_lock", json!("director")),
            "lock_name"
        )),
        "source.bosh_lock must be an http:// or https:// URL like https://locker.example.com \
         (got \"director\")"
    );
    assert_eq!(
        source_error(with(minimal_source(), "lock_name", json!(""))),
        "source.lock_name must not be empty"
    );
    assert_eq!(
        source_error(with(minimal_source(), "lock_name", json!("x".repeat(513)))),
        "source.lock_name is 513 bytes long; the server accepts at most 512"
    );
    assert_eq!(
        source_error(with(
            minimal_source(),
            "ca_cert",
            json!("not a certificate")
        )),
        "source.ca_cert holds no PEM certificate (expected text starting with -----BEGIN CERTIFICATE-----)"
    );
}

#[test]
fn bad_delays_in_source_are_explained() {
    assert_eq!(
        source_error(with(minimal_source(), "retry_delay", json!("10"))),
        format!(
            "source.retry_delay must be a duration like 500ms, 10s, 5m or 1h (got \"10\": {})",
            duration::parse("10").unwrap_err()
        )
    );
    assert_eq!(
        source_error(with(minimal_source(), "retry_delay", json!("0s"))),
        "source.retry_delay must be longer than zero, like 500ms"
    );
    assert_eq!(
        source_error(with(minimal_source(), "max_retry_delay", json!("0ms"))),
        "source.max_retry_delay must be longer than zero, like 500ms"
    );
    assert_eq!(
        source_error(with(minimal_source(), "max_retry_delay", json!("500ms"))),
        "source.max_retry_delay (500ms) must not be shorter than source.retry_delay (1s)"
    );
}

#[test]
fn lock_params_are_read() {
    let params = OutParams::from_json(&json!({"lock_op": "lock", "key": "deploy"})).unwrap();
    assert_eq!(params.lock_op, LockOp::Lock);
    assert_eq!(params.key, "deploy");
    assert_eq!(params.requestor(), "deploy");
    assert_eq!(params.timeout, None);

    let params = OutParams::from_json(&json!({
        "lock_op": "unlock", "key": "deploy", "lock_by": "build 7", "timeout": "2m",
        "retry_delay": "50ms", "max_retry_delay": "200ms",
    }))
    .unwrap();
    assert_eq!(params.lock_op, LockOp::Unlock);
    assert_eq!(params.requestor(), "build 7");
    assert_eq!(params.timeout, Some(Duration::from_secs(120)));
    let source = Source::from_json(&minimal_source()).unwrap();
    assert_eq!(
        params.retry_delays(&source),
        RetryDelays {
            first: Duration::from_millis(50),
            max: Duration::from_millis(200)
        }
    );

    let params =
        OutParams::from_json(&json!({"lock_op": "lock", "key": "k", "locked_by": "me"})).unwrap();
    assert_eq!(params.requestor(), "me");
    assert_eq!(params.retry_delays(&source), source.retry);
}

#[test]
fn a_typo_in_params_is_named_with_the_known_keys() {
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "lockd_by": "me"})),
        "params.lockd_by is not a known key (expected one of: lock_op, key, locked_by, lock_by, \
         timeout, retry_delay, max_retry_delay, ttl, hold)"
    );
}

#[test]
fn missing_or_wrong_params_are_explained() {
    assert_eq!(
        params_error(Value::Null),
        "params is missing (a put needs at least lock_op and key)"
    );
    assert_eq!(
        params_error(json!([])),
        "params must be an object of settings (got a list)"
    );
    assert_eq!(
        params_error(json!({"key": "k"})),
        "params.lock_op is missing (lock, unlock or renew)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "grab", "key": "k"})),
        "params.lock_op must be lock, unlock or renew (got \"grab\")"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock"})),
        "params.key is missing (the key that claims the lock, like the build's environment)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": 42})),
        "params.key must be a string (got a number)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": ""})),
        "params.key must not be empty"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "lock_by": ""})),
        "params.lock_by must not be empty (leave it out to use the key)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "lock_by": "a", "locked_by": "b"})),
        "params has both locked_by and lock_by: they are the same setting, keep one"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "timeout": "soon"})),
        format!(
            "params.timeout must be a duration like 500ms, 10s, 5m or 1h (got \"soon\": {})",
            duration::parse("soon").unwrap_err()
        )
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "timeout": 60})),
        "params.timeout must be a duration like 500ms, 10s, 5m or 1h (got a number)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "retry_delay": "0s"})),
        "params.retry_delay must be longer than zero, like 500ms"
    );
    assert_eq!(
        params_error(
            json!({"lock_op": "lock", "key": "k", "retry_delay": "2s", "max_retry_delay": "1s"})
        ),
        "params.max_retry_delay (1s) must not be shorter than params.retry_delay (2s)"
    );
}

#[test]
fn zero_timeout_is_allowed() {
    let params =
        OutParams::from_json(&json!({"lock_op": "lock", "key": "k", "timeout": "0s"})).unwrap();
    assert_eq!(params.timeout, Some(Duration::ZERO));
}

#[test]
fn get_takes_no_params() {
    assert_eq!(InParams::from_json(&Value::Null), Ok(InParams));
    assert_eq!(InParams::from_json(&json!({})), Ok(InParams));
    assert_eq!(
        InParams::from_json(&json!({"lock_op": "lock"}))
            .unwrap_err()
            .to_string(),
        "params.lock_op is not a known key (this step takes no params)"
    );
    assert_eq!(
        InParams::from_json(&json!("x")).unwrap_err().to_string(),
        "params must be an object of settings (got a string)"
    );
}

#[test]
fn null_counts_as_absent_for_every_optional_key() {
    let mut source = minimal_source();
    for key in [
        "bosh_lock",
        "username",
        "password",
        "ca_cert",
        "skip_ssl_validation",
        "retry_delay",
        "max_retry_delay",
        "ttl",
        "hold",
    ] {
        source[key] = Value::Null;
    }
    assert_eq!(
        Source::from_json(&source),
        Source::from_json(&minimal_source())
    );

    let params = json!({
        "lock_op": "lock", "key": "k", "locked_by": null, "lock_by": null, "timeout": null,
        "retry_delay": null, "max_retry_delay": null, "ttl": null, "hold": null,
    });
    assert_eq!(
        OutParams::from_json(&params),
        OutParams::from_json(&json!({"lock_op": "lock", "key": "k"}))
    );
}

#[test]
fn a_wrong_type_does_not_show_the_value() {
    let message = source_error(with(
        minimal_source(),
        "skip_ssl_validation",
        json!("hunter2"),
    ));
    assert!(
        !message.contains("hunter2"),
        "the value leaked into {message:?}"
    );
}

fn lock_params(ttl: Value) -> Value {
    json!({"lock_op": "lock", "key": "k", "ttl": ttl})
}

#[test]
fn ttl_is_a_duration_or_a_number_of_seconds() {
    let ttl = |written: Value| OutParams::from_json(&lock_params(written)).unwrap().ttl;
    assert_eq!(ttl(json!("90s")), Some(Duration::from_secs(90)));
    assert_eq!(ttl(json!("30m")), Some(Duration::from_secs(1800)));
    assert_eq!(ttl(json!("2h")), Some(Duration::from_secs(7200)));
    assert_eq!(ttl(json!("1h 30m")), Some(Duration::from_secs(5400)));
    assert_eq!(ttl(json!(600)), Some(Duration::from_secs(600)));
    assert_eq!(ttl(json!(1.5)), Some(Duration::from_millis(1500)));
    assert_eq!(ttl(Value::Null), None);

    let source = Source::from_json(&with(minimal_source(), "ttl", json!("45m"))).unwrap();
    assert_eq!(source.ttl, Some(Duration::from_secs(2700)));
    assert_eq!(Source::from_json(&minimal_source()).unwrap().ttl, None);
}

#[test]
fn a_ttl_that_is_not_a_lease_is_explained() {
    assert_eq!(
        params_error(lock_params(json!("soon"))),
        format!(
            "params.ttl must be a duration like 90s, 30m or 2h, or a number of seconds \
             (got \"soon\": {})",
            duration::parse("soon").unwrap_err()
        )
    );
    assert_eq!(
        params_error(lock_params(json!("0s"))),
        "params.ttl must be longer than zero, like 30m (got \"0s\")"
    );
    assert_eq!(
        params_error(lock_params(json!(0))),
        "params.ttl must be longer than zero, like 30m (got 0)"
    );
    assert_eq!(
        params_error(lock_params(json!(-5))),
        "params.ttl must be longer than zero, like 30m (got -5)"
    );
    assert_eq!(
        params_error(lock_params(json!(true))),
        "params.ttl must be a duration like 90s, 30m or 2h, or a number of seconds (got a boolean)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "ttl", json!(["30m"]))),
        "source.ttl must be a duration like 90s, 30m or 2h, or a number of seconds (got a list)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "ttl", json!("-1m"))),
        format!(
            "source.ttl must be a duration like 90s, 30m or 2h, or a number of seconds \
             (got \"-1m\": {})",
            duration::parse("-1m").unwrap_err()
        )
    );
}

#[test]
fn params_ttl_wins_over_source_ttl() {
    let source = Source::from_json(&with(minimal_source(), "ttl", json!("1h"))).unwrap();
    let lease = |params: Value| OutParams::from_json(&params).unwrap().lease_ttl(&source);
    assert_eq!(
        lease(lock_params(json!("5m"))),
        Ok(Some(Duration::from_secs(300))),
        "params.ttl should override source.ttl"
    );
    assert_eq!(
        lease(json!({"lock_op": "lock", "key": "k"})),
        Ok(Some(Duration::from_secs(3600))),
        "source.ttl should apply when params has none"
    );
    assert_eq!(
        lease(json!({"lock_op": "renew", "key": "k"})),
        Ok(Some(Duration::from_secs(3600)))
    );
    assert_eq!(
        lease(json!({"lock_op": "unlock", "key": "k"})),
        Ok(None),
        "unlock sends no ttl even when the source has one"
    );

    let no_ttl = Source::from_json(&minimal_source()).unwrap();
    let params = OutParams::from_json(&json!({"lock_op": "lock", "key": "k"})).unwrap();
    assert_eq!(
        params.lease_ttl(&no_ttl),
        Ok(None),
        "no ttl anywhere: none is sent"
    );
}

#[test]
fn renew_requires_a_ttl_from_params_or_source() {
    let params = OutParams::from_json(&json!({"lock_op": "renew", "key": "k"})).unwrap();
    assert_eq!(params.lock_op, LockOp::Renew);
    assert_eq!(
        params
            .lease_ttl(&Source::from_json(&minimal_source()).unwrap())
            .unwrap_err()
            .to_string(),
        "lock_op renew needs a ttl, the lease's new length from now: set params.ttl or \
         source.ttl, like 30m"
    );
    let params =
        OutParams::from_json(&json!({"lock_op": "renew", "key": "k", "ttl": "20m"})).unwrap();
    assert_eq!(
        params.lease_ttl(&Source::from_json(&minimal_source()).unwrap()),
        Ok(Some(Duration::from_secs(1200)))
    );
}

#[test]
fn ttl_on_unlock_is_refused() {
    assert_eq!(
        params_error(json!({"lock_op": "unlock", "key": "k", "ttl": "5m"})),
        "params.ttl has no effect on unlock, which ends the claim: leave it out (set it on the \
         lock or renew step)"
    );
}

#[test]
fn params_hold_wins_over_source_hold_and_only_lock_sends_one() {
    let source = |hold: Value| Source::from_json(&with(minimal_source(), "hold", hold)).unwrap();
    let hold = |source: &Source, params: Value| OutParams::from_json(&params).unwrap().hold(source);
    let lock = json!({"lock_op": "lock", "key": "k"});
    let by_source = source(json!("build"));
    assert_eq!(by_source.hold, Some(Hold::Build));
    assert_eq!(
        hold(&by_source, lock.clone()),
        Some((Hold::Build, "source.hold"))
    );
    assert_eq!(
        hold(
            &by_source,
            with(lock.clone(), "hold", json!("until_unlocked"))
        ),
        Some((Hold::UntilUnlocked, "params.hold")),
        "params.hold should override source.hold"
    );
    let unset = Source::from_json(&minimal_source()).unwrap();
    assert_eq!(
        hold(&unset, with(lock.clone(), "hold", json!("build"))),
        Some((Hold::Build, "params.hold"))
    );
    assert_eq!(hold(&unset, lock), None, "no hold anywhere: none is sent");
    for op in ["unlock", "renew"] {
        assert_eq!(
            hold(&by_source, json!({"lock_op": op, "key": "k", "ttl": null})),
            None,
            "{op} sends no hold even when the source has one"
        );
    }
}

#[test]
fn a_hold_that_is_not_build_or_until_unlocked_is_explained() {
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "hold": "bulid"})),
        "params.hold must be build or until_unlocked (got \"bulid\")"
    );
    assert_eq!(
        params_error(json!({"lock_op": "lock", "key": "k", "hold": true})),
        "params.hold must be build or until_unlocked (got a boolean)"
    );
    assert_eq!(
        source_error(with(minimal_source(), "hold", json!("for_ever"))),
        "source.hold must be build or until_unlocked (got \"for_ever\")"
    );
    assert_eq!(
        source_error(with(minimal_source(), "hold", json!(["build"]))),
        "source.hold must be build or until_unlocked (got a list)"
    );
}

#[test]
fn hold_on_unlock_or_renew_is_refused() {
    assert_eq!(
        params_error(json!({"lock_op": "unlock", "key": "k", "hold": "build"})),
        "params.hold has no effect on unlock, which ends the claim: leave it out (set it on the \
         lock step)"
    );
    assert_eq!(
        params_error(json!({"lock_op": "renew", "key": "k", "hold": "until_unlocked"})),
        "params.hold has no effect on renew: a claim keeps the hold it was locked with, so leave \
         it out (set it on the lock step)"
    );
}
