//! Reading a `/metrics` scrape with the Prometheus project's own parser of the text format (the
//! Python `prometheus_client` package), so that a test checks what a real scraper understands
//! rather than what a reader written next to the server would accept.
//!
//! `python3` is used as it is when it has `prometheus_client`; otherwise the package is
//! installed from PyPI with pip, once, into `prometheus-client-python/` in the cargo target
//! directory, and used from there (as `scripts/api-contract` does with schemathesis).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The version range of `prometheus_client` installed when `python3` has none.
const PACKAGE: &str = "prometheus_client>=0.20,<1";

/// Parses the text on stdin with the classic (version 0.0.4) text-format parser and writes
/// the families as JSON; values as text, so that `+Inf` and `NaN` survive.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": repr(float(s.value))}
            for s in family.samples
        ],
    }
    for family in text_string_to_metric_families(sys.stdin.read())
]
json.dump(families, sys.stdout)
"#;

/// One metric family as the parser read it.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, ... (`unknown` for samples with no `# TYPE`).
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// One sample (one line of the scrape).
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A histogram's series: its count, its sum, and its cumulative buckets by upper bound.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub count: f64,
    pub sum: f64,
    pub buckets: Vec<(f64, f64)>,
}

/// A parsed scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub families: Vec<Family>,
}

impl Scrape {
    /// Parses `text` with `prometheus_client`; panics, with the parser's error, if it is not
    /// the Prometheus text format.
    pub fn parse(text: &str) -> Scrape {
        let (python, path) = parser();
        let mut command = Command::new(python);
        command
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(path) = path {
            command.env("PYTHONPATH", path);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{python} does not start: {e}"));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("write the scrape to the parser");
        let out = child.wait_with_output().expect("the parser ends");
        assert!(
            out.status.success(),
            "the Prometheus parser refused the scrape:\n{}\n--- the scrape:\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).expect("the parser writes JSON");
        let families = parsed
            .as_array()
            .expect("a list of families")
            .iter()
            .map(family_from)
            .collect();
        Scrape { families }
    }

    /// The family called `name` (as the parser names it: a counter without `_total`).
    pub fn family(&self, name: &str) -> &Family {
        self.families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no metric family {name} in the scrape: {:?}", self.names()))
    }

    /// Every sample called `name` whose labels include `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(move |s| s.name == name && has_labels(s, labels))
    }

    /// The value of the one sample called `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.samples(name, labels).collect();
        match found.as_slice() {
            [one] => one.value,
            [] => panic!(
                "no sample {name} with labels {labels:?} in the scrape: {:?}",
                self.names()
            ),
            more => panic!("{} samples {name} with labels {labels:?}", more.len()),
        }
    }

    /// The series of histogram `name` with labels `labels`, checked to be consistent: buckets
    /// cumulative, the last one `+Inf` and equal to the count.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let family = self.family(name);
        assert_eq!(family.kind, "histogram", "{name} is a histogram");
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = family
            .samples
            .iter()
            .filter(|s| s.name == bucket && has_labels(s, labels))
            .map(|s| {
                let le = s.labels.get("le").expect("a bucket has le");
                (le.parse::<f64>().expect("le is a number"), s.value)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let histogram = Histogram {
            count: self.value(&format!("{name}_count"), labels),
            sum: self.value(&format!("{name}_sum"), labels),
            buckets,
        };
        assert!(
            histogram.buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} {labels:?}: buckets are cumulative: {histogram:?}"
        );
        assert_eq!(
            histogram.buckets.last().copied(),
            Some((f64::INFINITY, histogram.count)),
            "{name} {labels:?}: the +Inf bucket holds every observation"
        );
        histogram
    }

    fn names(&self) -> Vec<&str> {
        self.families.iter().map(|f| f.name.as_str()).collect()
    }
}

fn has_labels(sample: &Sample, labels: &[(&str, &str)]) -> bool {
    labels
        .iter()
        .all(|(k, v)| sample.labels.get(*k).is_some_and(|have| have == v))
}

fn family_from(value: &Value) -> Family {
    let text = |v: &Value| v.as_str().expect("a string").to_owned();
    Family {
        name: text(&value["name"]),
        kind: text(&value["type"]),
        help: text(&value["help"]),
        samples: value["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| Sample {
                name: text(&s["name"]),
                labels: s["labels"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect(),
                value: text(&s["value"]).parse().expect("a number"),
            })
            .collect(),
    }
}

/// The Python to run the parser with, and the `PYTHONPATH` it needs, if any.
fn parser() -> (&'static str, Option<&'static Path>) {
    static INSTALLED: OnceLock<Option<PathBuf>> = OnceLock::new();
    let path = INSTALLED.get_or_init(|| {
        if imports_parser(None) {
            return None;
        }
        Some(install())
    });
    ("python3", path.as_deref())
}

fn imports_parser(path: Option<&Path>) -> bool {
    let mut command = Command::new("python3");
    command
        .args(["-c", "import prometheus_client.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(path) = path {
        command.env("PYTHONPATH", path);
    }
    command.status().is_ok_and(|s| s.success())
}

/// Installs `prometheus_client` into the target directory (once: a later run finds it there).
/// Test processes running at once each install into a directory of their own and rename it
/// into place; the first rename wins.
fn install() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binary lives in target/<profile>/deps");
    let dir = target.join("prometheus-client-python");
    if imports_parser(Some(&dir)) {
        return dir;
    }
    let scratch = target.join(format!("prometheus-client-python.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
        ])
        .arg(&scratch)
        .arg(PACKAGE)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 does not start ({e}): the metrics tests need python3 with pip")
        });
    assert!(
        out.status.success(),
        "could not install the Prometheus parser ({PACKAGE}) with pip into {}:\n{}\n\
         install it for python3 (python3 -m pip install '{PACKAGE}') and run the tests again",
        scratch.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(&scratch, &dir).is_err() {
        // Another test process was first.
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        imports_parser(Some(&dir)),
        "{PACKAGE} was installed into {} but python3 cannot import it from there",
        dir.display()
    );
    dir
}
