//! The pipelines in `pipeline-examples/` are ones a user can `fly set-pipeline` as they are.
//!
//! Every example must pass [`PipelineChecker`]; broken copies of the examples show that each
//! kind of mistake is caught, with a message naming the file and the problem.

mod checker;

use std::path::PathBuf;

use checker::PipelineChecker;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipeline-examples")
}

/// Every `*.yml` in `pipeline-examples/`: file name and text, sorted by name.
fn examples() -> Vec<(String, String)> {
    let dir = examples_dir();
    let mut examples: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml")
        })
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
            let name = path.file_name().expect("a file name").to_string_lossy();
            (format!("pipeline-examples/{name}"), text)
        })
        .collect();
    examples.sort();
    examples
}

fn example(name: &str) -> String {
    let path = examples_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The problems found in `example` after replacing the first `from` in it with `to`.
fn problems_in_broken_copy(example_name: &str, from: &str, to: &str) -> Vec<String> {
    let text = example(example_name);
    assert!(
        text.contains(from),
        "pipeline-examples/{example_name} no longer contains {from:?}; update this test to break it another way"
    );
    let broken = text.replacen(from, to, 1);
    PipelineChecker::new().problems(&format!("broken copy of {example_name}"), &broken)
}

/// Asserts that one of `problems` contains every part of `expected`.
#[track_caller]
fn assert_reported(problems: &[String], expected: &[&str]) {
    assert!(
        problems
            .iter()
            .any(|problem| expected.iter().all(|part| problem.contains(part))),
        "expected a problem mentioning {expected:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_example_is_a_valid_pipeline_for_this_resource() {
    let examples = examples();
    assert!(
        examples.len() >= 5,
        "expected the examples in {}, found {}",
        examples_dir().display(),
        examples.len()
    );
    let checker = PipelineChecker::new();
    let problems: Vec<String> = examples
        .iter()
        .flat_map(|(file, text)| checker.problems(file, text))
        .collect();
    assert!(
        problems.is_empty(),
        "the example pipelines have problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn examples_show_every_pattern_the_readme_promises() {
    let all: String = examples().into_iter().map(|(_, text)| text).collect();
    for pattern in [
        "type: registry-image",
        "lock_name:",
        "bosh_lock:",
        "locked_by:",
        "ensure:",
        "on_success:",
        "timeout:",
        "trigger: true",
        "no_get: true",
        "((locker.password))",
    ] {
        assert!(
            all.contains(pattern),
            "no example in pipeline-examples/ shows {pattern:?}"
        );
    }
}

#[test]
fn a_typo_in_a_locker_source_key_is_rejected() {
    let problems = problems_in_broken_copy(
        "exclusive-lock.yml",
        "lock_name: staging",
        "lock_nmae: staging",
    );
    assert_reported(
        &problems,
        &[
            "broken copy of exclusive-lock.yml",
            "resources[0] (staging-lock)",
            "source.lock_nmae is not a known key (expected one of: locker_uri, lock_name",
        ],
    );
}

#[test]
fn a_put_to_an_undeclared_resource_in_an_ensure_hook_is_rejected() {
    // The first put indented this deep is the unlock in the first job's `ensure`.
    let problems = problems_in_broken_copy(
        "exclusive-lock.yml",
        "      put: staging-lock",
        "      put: staging-lok",
    );
    assert_reported(
        &problems,
        &[
            "broken copy of exclusive-lock.yml",
            "jobs[0] (deploy).plan[1].ensure",
            "put staging-lok names an undeclared resource (declared: staging-lock)",
        ],
    );
}

#[test]
fn a_get_of_an_undeclared_resource_is_rejected() {
    let problems = problems_in_broken_copy(
        "trigger-on-lock-change.yml",
        "- get: staging-lock",
        "- get: staging",
    );
    assert_reported(
        &problems,
        &[
            "jobs[0] (announce-lock-state).plan[0]",
            "get staging names an undeclared resource",
        ],
    );
}

#[test]
fn a_resource_of_an_undeclared_type_is_rejected() {
    let problems = problems_in_broken_copy("shared-key.yml", "type: locker", "type: lockr");
    assert_reported(
        &problems,
        &[
            "broken copy of shared-key.yml",
            "resources[0] (staging-lock) has the undeclared resource type 'lockr'",
            "declared: locker",
        ],
    );
}

#[test]
fn invalid_yaml_is_rejected() {
    let problems = problems_in_broken_copy("bosh-lock.yml", "  plan:\n", "  plan: [\n");
    assert_reported(
        &problems,
        &["broken copy of bosh-lock.yml", "not valid YAML"],
    );
}

#[test]
fn a_schema_violation_is_rejected() {
    let problems = problems_in_broken_copy("bosh-lock.yml", "  plan:\n", "  plans:\n");
    assert_reported(
        &problems,
        &[
            "broken copy of bosh-lock.yml",
            "/jobs/0 breaks the Concourse pipeline schema",
            "'plans' was unexpected",
        ],
    );
}

#[test]
fn put_params_the_resource_rejects_are_rejected() {
    let problems = problems_in_broken_copy(
        "keep-failed-environment-locked.yml",
        "lock_op: unlock",
        "lock_op: unlok",
    );
    assert_reported(
        &problems,
        &[
            "jobs[0] (upgrade).plan[1].on_success",
            "rejects the params of put performance-env-lock",
            "params.lock_op must be lock, unlock or renew (got \"unlok\")",
        ],
    );

    let problems = problems_in_broken_copy("exclusive-lock.yml", "timeout: 30m", "timeout: soon");
    assert_reported(
        &problems,
        &["params.timeout must be a duration like 500ms, 10s, 5m or 1h"],
    );
}

#[test]
fn a_renew_without_a_ttl_in_params_or_source_is_rejected() {
    let problems = problems_in_broken_copy("lease-and-renew.yml", "    ttl: 45m\n", "");
    assert_reported(
        &problems,
        &[
            "jobs[0] (provision).plan[1].do[1]",
            "rejects the params of put perf-lock",
            "lock_op renew needs a ttl",
        ],
    );
    assert!(
        !problems.iter().any(|problem| problem.contains("soak-test")),
        "soak-test's renew has its own ttl and should pass, got:\n{}",
        problems.join("\n")
    );

    let problems = problems_in_broken_copy("lease-and-renew.yml", "ttl: 3h", "ttl: soon");
    assert_reported(
        &problems,
        &[
            "jobs[1] (soak-test).plan[1]",
            "params.ttl must be a duration like 90s, 30m or 2h, or a number of seconds",
        ],
    );
}

#[test]
fn a_locker_source_rejected_after_variables_are_filled_in_is_rejected() {
    // Both keys hold variables; the resource wants exactly one of them.
    let problems = problems_in_broken_copy(
        "bosh-lock.yml",
        "    bosh_lock: ((bosh_director_url))\n",
        "    bosh_lock: ((bosh_director_url))\n    lock_name: ((lock))\n",
    );
    assert_reported(
        &problems,
        &["source has both lock_name and bosh_lock: set exactly one of them"],
    );
}

#[test]
fn gets_and_puts_are_found_in_every_kind_of_step() {
    let pipeline = r#"
resources:
- name: repo
  type: git
  source: {uri: https://example.com/repo.git}
jobs:
- name: everything
  plan:
  - get: repo
  - do:
    - put: in-do
  - in_parallel:
    - get: in-parallel-list
  - in_parallel:
      limit: 2
      steps:
      - get: in-parallel-steps
  - aggregate:
    - get: in-aggregate
  - try:
      put: in-try
  - task: t
    file: repo/t.yml
    ensure: {put: in-ensure}
    on_success: {put: in-on-success}
    on_failure: {put: in-on-failure}
    on_abort: {put: in-on-abort}
    on_error:
      do:
      - try:
          in_parallel:
          - put: deeply-nested
  - get: alias
    resource: in-resource-field
  on_failure: {put: in-job-hook}
"#;
    let problems = PipelineChecker::new().problems("nested.yml", pipeline);
    for (at, undeclared) in [
        ("plan[1].do[0]", "put in-do"),
        ("plan[2].in_parallel[0]", "get in-parallel-list"),
        ("plan[3].in_parallel[0]", "get in-parallel-steps"),
        ("plan[4].aggregate[0]", "get in-aggregate"),
        ("plan[5].try", "put in-try"),
        ("plan[6].ensure", "put in-ensure"),
        ("plan[6].on_success", "put in-on-success"),
        ("plan[6].on_failure", "put in-on-failure"),
        ("plan[6].on_abort", "put in-on-abort"),
        (
            "plan[6].on_error.do[0].try.in_parallel[0]",
            "put deeply-nested",
        ),
        ("plan[7]", "get in-resource-field"),
        ("jobs[0] (everything).on_failure", "put in-job-hook"),
    ] {
        assert_reported(
            &problems,
            &[
                "nested.yml",
                at,
                &format!("{undeclared} names an undeclared resource"),
            ],
        );
    }
    let undeclared = problems
        .iter()
        .filter(|problem| problem.contains("undeclared resource"))
        .count();
    assert_eq!(
        undeclared,
        12,
        "expected one problem per step, got:\n{}",
        problems.join("\n")
    );
}
