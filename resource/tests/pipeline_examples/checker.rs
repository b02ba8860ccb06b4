//! What makes an example pipeline wrong, short of running it on Concourse.
//!
//! A [`PipelineChecker`] reads a pipeline file and lists its problems, each naming the file, the
//! place and what is wrong: YAML that does not parse; a top level that breaks the Concourse
//! pipeline schema (`tests/fixtures/concourse-pipeline-schema.json`); a `get` or `put` anywhere
//! in a plan that names an undeclared resource; a resource, resource type or task image of an
//! undeclared type; and, for resources of the locker type, a `source` or step `params` that the
//! resource's own validation ([`Source::from_json`], [`OutParams::from_json`] and
//! [`OutParams::lease_ttl`], [`InParams::from_json`], the code the binaries run) rejects. Concourse variables `((...))` are
//! replaced by plausible values first, as Concourse would before running the resource. A
//! pipeline without a locker resource is a problem too: every example is for this resource, and
//! one whose image is not recognised would otherwise skip the resource's validation silently.

use std::collections::{BTreeMap, BTreeSet};

use locker_resource::config::{InParams, OutParams, Source};
use serde_json::{Map, Value};

/// The pipeline schema, copied from cappyzawa/concourse-pipeline-jsonschema (see the README next
/// to it).
const PIPELINE_SCHEMA: &str = include_str!("../fixtures/concourse-pipeline-schema.json");

/// Resource types every Concourse worker has without a `resource_types` entry.
const BUILT_IN_TYPES: &[&str] = &[
    "bosh-io-release",
    "bosh-io-stemcell",
    "cf",
    "docker-image",
    "git",
    "github-release",
    "hg",
    "mock",
    "pool",
    "registry-image",
    "s3",
    "semver",
    "time",
    "tracker",
];

/// The image name (last part of the repository) that marks a resource type as this resource.
const LOCKER_IMAGE: &str = "locker-resource";

/// Step fields that hold one more step to run after it.
const HOOKS: &[&str] = &["ensure", "on_success", "on_failure", "on_abort", "on_error"];

/// Checks pipelines; made once, used for many files.
pub struct PipelineChecker {
    schema: jsonschema::Validator,
    /// A PEM certificate standing in for `((...))` in `ca_cert`, which must hold a certificate.
    plausible_ca_cert: String,
}

impl PipelineChecker {
    /// A checker with the pipeline schema loaded.
    pub fn new() -> Self {
        let schema: Value =
            serde_json::from_str(PIPELINE_SCHEMA).expect("the pipeline schema fixture is JSON");
        let schema =
            jsonschema::draft4::new(&schema).expect("the pipeline schema fixture is a schema");
        let plausible_ca_cert = rcgen::generate_simple_self_signed(["locker.example.com".into()])
            .expect("a self-signed certificate")
            .cert
            .pem();
        Self {
            schema,
            plausible_ca_cert,
        }
    }

    /// The problems in the pipeline `text` read from `file`, each starting with `file`; empty
    /// when there are none.
    pub fn problems(&self, file: &str, text: &str) -> Vec<String> {
        let pipeline = match parse_yaml(text) {
            Ok(pipeline) => pipeline,
            Err(problem) => return vec![format!("{file}: {problem}")],
        };
        let mut review = Review {
            checker: self,
            pipeline: &pipeline,
            problems: Vec::new(),
            resources: BTreeMap::new(),
            types: BTreeMap::new(),
            jobs: BTreeSet::new(),
        };
        review.check_schema();
        review.check_declarations();
        review.check_jobs();
        review
            .problems
            .into_iter()
            .map(|problem| format!("{file}: {problem}"))
            .collect()
    }
}

/// Parses YAML as Concourse does (anchors and `<<` merge keys included) into JSON.
fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(text).map_err(|err| format!("not valid YAML: {err}"))?;
    yaml.apply_merge()
        .map_err(|err| format!("not valid YAML: {err}"))?;
    serde_json::to_value(&yaml).map_err(|err| {
        format!("not a pipeline: {err} (every key must be a string, every value JSON-like)")
    })
}

/// One pipeline under check, with what it declares.
struct Review<'a> {
    checker: &'a PipelineChecker,
    pipeline: &'a Value,
    problems: Vec<String>,
    /// Resource name to its `resources` entry.
    resources: BTreeMap<String, &'a Value>,
    /// Resource type name to its `resource_types` entry.
    types: BTreeMap<String, &'a Value>,
    jobs: BTreeSet<String>,
}

impl<'a> Review<'a> {
    fn report(&mut self, problem: String) {
        self.problems.push(problem);
    }

    fn check_schema(&mut self) {
        let errors: Vec<String> = self
            .checker
            .schema
            .iter_errors(self.pipeline)
            .map(|error| {
                let at = error.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                format!(
                    "{at} breaks the Concourse pipeline schema: {}",
                    shorten(&error.to_string())
                )
            })
            .collect();
        self.problems.extend(errors);
    }

    /// Collects the declared names (reporting duplicates) and checks each declared type.
    fn check_declarations(&mut self) {
        let pipeline = self.pipeline;
        for (index, entry) in entries(pipeline, "resource_types") {
            if let Some(name) = name_of(entry)
                && self.types.insert(name.to_owned(), entry).is_some()
            {
                self.report(format!(
                    "resource_types[{index}]: the resource type '{name}' is declared twice"
                ));
            }
        }
        for (index, entry) in entries(pipeline, "resources") {
            if let Some(name) = name_of(entry)
                && self.resources.insert(name.to_owned(), entry).is_some()
            {
                self.report(format!(
                    "resources[{index}]: the resource '{name}' is declared twice"
                ));
            }
        }
        for (index, entry) in entries(pipeline, "jobs") {
            if let Some(name) = name_of(entry)
                && !self.jobs.insert(name.to_owned())
            {
                self.report(format!("jobs[{index}]: the job '{name}' is declared twice"));
            }
        }

        for (index, entry) in entries(pipeline, "resource_types") {
            let at = format!(
                "resource_types[{index}] ({})",
                name_of(entry).unwrap_or("?")
            );
            self.check_type(&at, entry);
        }
        for (index, entry) in entries(pipeline, "resources") {
            let at = format!("resources[{index}] ({})", name_of(entry).unwrap_or("?"));
            self.check_type(&at, entry);
            if self.is_locker(entry) {
                let source = self.locker_source(entry);
                if let Err(err) = Source::from_json(&source) {
                    self.report(format!(
                        "{at}: the locker resource rejects its source: {err}"
                    ));
                }
            }
        }
        let lockers = self
            .resources
            .values()
            .filter(|r| self.is_locker(r))
            .count();
        if lockers == 0 {
            self.report(format!(
                "declares no locker resource, so nothing was checked with the resource's \
                 validation (a locker resource's type is a resource_types entry whose image \
                 repository ends in /{LOCKER_IMAGE})"
            ));
        }
        for (index, group) in entries(pipeline, "groups") {
            let jobs = group
                .get("jobs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for job in jobs.filter_map(Value::as_str) {
                // Groups may name jobs by glob; only plain names can be checked.
                if !job.contains(['*', '?', '[']) && !self.jobs.contains(job) {
                    self.report(format!(
                        "groups[{index}] names the undeclared job '{job}' (declared: {})",
                        listed(&self.jobs)
                    ));
                }
            }
        }
    }

    /// Checks that `entry.type` is built in or declared in `resource_types`.
    fn check_type(&mut self, at: &str, entry: &Value) {
        let Some(kind) = entry.get("type").and_then(Value::as_str) else {
            return;
        };
        if !BUILT_IN_TYPES.contains(&kind) && !self.types.contains_key(kind) {
            self.report(format!(
                "{at} has the undeclared resource type '{kind}' (declare it in resource_types; \
                 declared: {}; built in: {})",
                listed(self.types.keys()),
                BUILT_IN_TYPES.join(", ")
            ));
        }
    }

    /// Whether `resource` is of a type whose image is this project's resource.
    fn is_locker(&self, resource: &Value) -> bool {
        let Some(kind) = resource.get("type").and_then(Value::as_str) else {
            return false;
        };
        let Some(declaration) = self.types.get(kind) else {
            return false;
        };
        let repository = declaration
            .pointer("/source/repository")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // registry.example.com/locker-resource, locker-resource:1.2, .../locker-resource@sha256:...
        let image = repository.rsplit('/').next().unwrap_or_default();
        let image = image.split(['@', ':']).next().unwrap_or_default();
        image == LOCKER_IMAGE
    }

    /// The `source` the resource is run with: the type's `defaults` under the resource's own
    /// keys, with variables replaced.
    fn locker_source(&self, resource: &Value) -> Value {
        let defaults = resource
            .get("type")
            .and_then(Value::as_str)
            .and_then(|kind| self.types.get(kind))
            .and_then(|declaration| declaration.get("defaults"))
            .and_then(Value::as_object);
        let mut source: Map<String, Value> = defaults.cloned().unwrap_or_default();
        match resource.get("source") {
            Some(Value::Object(own)) => source.extend(own.clone()),
            Some(other) if defaults.is_none() => return self.substitute(other, None),
            _ => {}
        }
        self.substitute(&Value::Object(source), None)
    }

    fn check_jobs(&mut self) {
        let pipeline = self.pipeline;
        for (index, job) in entries(pipeline, "jobs") {
            let at = format!("jobs[{index}] ({})", name_of(job).unwrap_or("?"));
            for (step_index, step) in job
                .get("plan")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.check_step(&format!("{at}.plan[{step_index}]"), step);
            }
            for hook in HOOKS {
                if let Some(step) = job.get(*hook) {
                    self.check_step(&format!("{at}.{hook}"), step);
                }
            }
        }
    }

    /// Checks one step and every step nested in it.
    fn check_step(&mut self, at: &str, step: &Value) {
        let Some(fields) = step.as_object() else {
            return;
        };
        if let Some(Value::String(name)) = fields.get("get") {
            let resource = fields
                .get("resource")
                .and_then(Value::as_str)
                .unwrap_or(name);
            if let Some(declared) = self.resource(at, "get", resource)
                && self.is_locker(declared)
            {
                self.check_in_params(at, "get", resource, "params", fields.get("params"));
            }
            let passed = fields
                .get("passed")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for job in passed.filter_map(Value::as_str) {
                if !self.jobs.contains(job) {
                    self.report(format!(
                        "{at}: get {name} has passed: [{job}], an undeclared job (declared: {})",
                        listed(&self.jobs)
                    ));
                }
            }
        }
        if let Some(Value::String(name)) = fields.get("put") {
            let resource = fields
                .get("resource")
                .and_then(Value::as_str)
                .unwrap_or(name);
            if let Some(declared) = self.resource(at, "put", resource)
                && self.is_locker(declared)
            {
                let params = self.substitute(fields.get("params").unwrap_or(&Value::Null), None);
                // The rules across params and source (renew needs a ttl from either) once both
                // pass on their own; a rejected source is reported with the resource.
                let source = Source::from_json(&self.locker_source(declared));
                let checked = OutParams::from_json(&params).and_then(|params| match &source {
                    Ok(source) => params.lease_ttl(source).map(drop),
                    Err(_) => Ok(()),
                });
                if let Err(err) = checked {
                    self.report(format!(
                        "{at}: the locker resource rejects the params of put {resource}: {err}"
                    ));
                }
                self.check_in_params(at, "put", resource, "get_params", fields.get("get_params"));
            }
        }
        if let Some(image) = step.pointer("/config/image_resource") {
            self.check_type(&format!("{at}: the task's image_resource"), image);
        }

        for list in ["do", "aggregate", "in_parallel"] {
            let steps = match fields.get(list) {
                Some(Value::Array(steps)) => Some(steps),
                // in_parallel: {steps: [...], limit: n, fail_fast: true}
                Some(Value::Object(config)) => config.get("steps").and_then(Value::as_array),
                _ => None,
            };
            for (index, nested) in steps.into_iter().flatten().enumerate() {
                self.check_step(&format!("{at}.{list}[{index}]"), nested);
            }
        }
        for single in std::iter::once(&"try").chain(HOOKS) {
            if let Some(nested) = fields.get(*single) {
                self.check_step(&format!("{at}.{single}"), nested);
            }
        }
    }

    /// The declared resource `name`, or a report that `step` names an undeclared one.
    fn resource(&mut self, at: &str, step: &str, name: &str) -> Option<&'a Value> {
        let found = self.resources.get(name).copied();
        if found.is_none() {
            self.report(format!(
                "{at}: {step} {name} names an undeclared resource (declared: {})",
                listed(self.resources.keys())
            ));
        }
        found
    }

    /// `params` of a get, or `get_params` of a put: what `in` receives.
    fn check_in_params(
        &mut self,
        at: &str,
        step: &str,
        resource: &str,
        key: &str,
        params: Option<&Value>,
    ) {
        let params = self.substitute(params.unwrap_or(&Value::Null), None);
        if let Err(err) = InParams::from_json(&params) {
            self.report(format!(
                "{at}: the locker resource rejects the {key} of {step} {resource}: {err}"
            ));
        }
    }

    /// `value` with every `((variable))` replaced by a value plausible for the key it is under.
    fn substitute(&self, value: &Value, key: Option<&str>) -> Value {
        match value {
            Value::String(text) => {
                let trimmed = text.trim();
                let whole = trimmed.starts_with("((")
                    && trimmed.ends_with("))")
                    && trimmed[2..].find("))") == Some(trimmed.len() - 4);
                if whole {
                    self.plausible_value(key)
                } else {
                    Value::String(replace_vars(text))
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.substitute(item, key))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(name, item)| (name.clone(), self.substitute(item, Some(name))))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// What a credential manager would plausibly hold for a variable used as the value of `key`.
    fn plausible_value(&self, key: Option<&str>) -> Value {
        match key.unwrap_or_default() {
            "locker_uri" => "https://locker.example.com".into(),
            "bosh_lock" => "https://10.0.0.6:25555".into(),
            "ca_cert" => self.checker.plausible_ca_cert.clone().into(),
            "username" => "concourse".into(),
            "password" => "example-password".into(),
            "skip_ssl_validation" => false.into(),
            "timeout" | "retry_delay" | "max_retry_delay" | "ttl" => "1m".into(),
            "lock_op" => "lock".into(),
            _ => "example".into(),
        }
    }
}

/// `text` with each `((variable))` inside it replaced by `example`.
fn replace_vars(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("((") {
        let Some(length) = rest[start..].find("))") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("example");
        rest = &rest[start + length + 2..];
    }
    out.push_str(rest);
    out
}

/// The entries of a top-level list such as `resources`, with their index.
fn entries<'v>(pipeline: &'v Value, list: &str) -> impl Iterator<Item = (usize, &'v Value)> {
    pipeline
        .get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn name_of(entry: &Value) -> Option<&str> {
    entry.get("name").and_then(Value::as_str)
}

fn listed<'n>(names: impl IntoIterator<Item = &'n String>) -> String {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A schema message cut to a readable length: some quote the whole offending value.
fn shorten(message: &str) -> String {
    const LIMIT: usize = 300;
    match message.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message.to_owned(),
    }
}
