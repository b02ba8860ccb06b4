//! The build a `get` or `put` runs for, from Concourse's build variables: named in log lines so
//! that whoever reads a waiting build's log knows who is waiting, and sent with every `lock` as
//! the claim's `owner`, so that the server (and whoever waits) can name the holding build.
//!
//! [`BuildEnv::owner`] and [`BuildEnv::from_owner`] translate between the variables and the
//! `owner` object the server keeps; the link to a build is made as Concourse makes it.

use std::collections::BTreeMap;

use locker_protocol::{MAX_OWNER_BYTES, MAX_OWNER_FIELDS, MAX_OWNER_VALUE};

/// Concourse's build variables; the job and pipeline ones are absent in one-off builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `BUILD_ID`: the build's internal id.
    pub id: Option<String>,
    /// `BUILD_NAME`: the build's number within its job.
    pub name: Option<String>,
    /// `BUILD_JOB_NAME`.
    pub job_name: Option<String>,
    /// `BUILD_PIPELINE_NAME`.
    pub pipeline_name: Option<String>,
    /// `BUILD_PIPELINE_INSTANCE_VARS`: an instanced pipeline's vars, as JSON.
    pub pipeline_instance_vars: Option<String>,
    /// `BUILD_TEAM_NAME`.
    pub team_name: Option<String>,
    /// `ATC_EXTERNAL_URL`: the Concourse web URL.
    pub atc_external_url: Option<String>,
    /// `BUILD_URL` (Concourse 8 and later): the build's page.
    pub build_url: Option<String>,
}

impl BuildEnv {
    /// Reads the variables through `lookup` (`|name| std::env::var(name).ok()` in the binaries).
    /// Empty values count as absent.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        Self {
            id: get("BUILD_ID"),
            name: get("BUILD_NAME"),
            job_name: get("BUILD_JOB_NAME"),
            pipeline_name: get("BUILD_PIPELINE_NAME"),
            pipeline_instance_vars: get("BUILD_PIPELINE_INSTANCE_VARS"),
            team_name: get("BUILD_TEAM_NAME"),
            atc_external_url: get("ATC_EXTERNAL_URL"),
            build_url: get("BUILD_URL"),
        }
    }

    /// The build a holder's `owner` names, as [`BuildEnv::owner`] wrote it; fields it does not
    /// know are ignored, empty ones count as absent.
    pub fn from_owner(owner: &BTreeMap<String, String>) -> Self {
        Self::from_lookup(|variable| {
            let field = OWNER_FIELDS
                .iter()
                .find(|(_, known)| *known == variable)
                .map(|(field, _)| *field)?;
            owner.get(field).cloned()
        })
    }

    /// Whether anything names a build (the URL alone is not enough to describe one).
    pub fn is_known(&self) -> bool {
        self.id.is_some()
            || self.name.is_some()
            || self.job_name.is_some()
            || self.pipeline_name.is_some()
            || self.build_url.is_some()
    }

    /// The build's page, as Concourse links it: `BUILD_URL` when Concourse sets it; for a job's
    /// build `{atc}/teams/{team}/pipelines/{pipeline}/jobs/{job}/builds/{name}` (each segment
    /// percent-encoded, an instanced pipeline's vars as `?vars=`); otherwise, a one-off build,
    /// `{atc}/builds/{id}`.
    pub fn url(&self) -> Option<String> {
        if let Some(url) = &self.build_url {
            return Some(url.clone());
        }
        let atc = self.atc_external_url.as_deref()?.trim_end_matches('/');
        if let (Some(team), Some(pipeline), Some(job), Some(name)) = (
            &self.team_name,
            &self.pipeline_name,
            &self.job_name,
            &self.name,
        ) {
            let vars = self
                .pipeline_instance_vars
                .as_deref()
                .map(|vars| format!("?vars={}", percent_encode(vars)))
                .unwrap_or_default();
            let [team, pipeline, job, name] =
                [team, pipeline, job, name].map(|s| percent_encode(s));
            return Some(format!(
                "{atc}/teams/{team}/pipelines/{pipeline}/jobs/{job}/builds/{name}{vars}"
            ));
        }
        self.id
            .as_ref()
            .map(|id| format!("{atc}/builds/{}", percent_encode(id)))
    }

    /// The claim's `owner` for the server: the fields of [`OWNER_FIELDS`] that are known, and
    /// `build_url` from [`BuildEnv::url`]; empty when nothing is known (then no owner is sent).
    ///
    /// The server refuses an owner whose names and values add up to more than
    /// [`MAX_OWNER_BYTES`], values longer than [`MAX_OWNER_VALUE`] (a `build_url` with an
    /// instanced pipeline's vars can be) and values with control characters; such a field is
    /// left out, so that an odd name costs a detail of the log, not the lock.
    pub fn owner(&self) -> BTreeMap<String, String> {
        let known = OWNER_FIELDS.iter().filter_map(|(field, variable)| {
            let value = match *variable {
                "BUILD_URL" => self.url(),
                variable => self.variable(variable).cloned(),
            };
            value
                .filter(|value| value.len() <= MAX_OWNER_VALUE && !value.contains(char::is_control))
                .map(|value| (*field, value))
        });
        let mut owner = BTreeMap::new();
        let mut bytes = 0;
        for (field, value) in known {
            let size = field.len() + value.len();
            if bytes + size <= MAX_OWNER_BYTES {
                bytes += size;
                owner.insert(field.to_owned(), value);
            }
        }
        owner
    }

    fn variable(&self, variable: &str) -> Option<&String> {
        match variable {
            "BUILD_ID" => self.id.as_ref(),
            "BUILD_NAME" => self.name.as_ref(),
            "BUILD_JOB_NAME" => self.job_name.as_ref(),
            "BUILD_PIPELINE_NAME" => self.pipeline_name.as_ref(),
            "BUILD_TEAM_NAME" => self.team_name.as_ref(),
            "ATC_EXTERNAL_URL" => self.atc_external_url.as_ref(),
            "BUILD_URL" => self.build_url.as_ref(),
            _ => None,
        }
    }

    /// Who is asking, for log lines:
    /// `main/prod/deploy #12 (https://ci/teams/main/pipelines/prod/jobs/deploy/builds/12)`.
    pub fn describe(&self) -> String {
        let number = self
            .name
            .as_deref()
            .map(|name| format!(" #{name}"))
            .unwrap_or_default();
        let who = match (&self.pipeline_name, &self.job_name) {
            (Some(pipeline), Some(job)) => {
                let team = self
                    .team_name
                    .as_deref()
                    .map(|team| format!("{team}/"))
                    .unwrap_or_default();
                format!("{team}{pipeline}/{job}{number}")
            }
            _ if self.name.is_some() || self.id.is_some() => {
                let id = match (&self.name, &self.id) {
                    (None, Some(id)) => format!(" {id}"),
                    _ => number,
                };
                format!("one-off build{id}")
            }
            _ if self.build_url.is_some() => "a build".to_owned(),
            _ => "a build outside Concourse".to_owned(),
        };
        match self.url() {
            Some(url) => format!("{who} ({url})"),
            None => who,
        }
    }
}

/// The `owner` fields the resource sends (well under the server's [`MAX_OWNER_FIELDS`]), in
/// the server's words, and the build variable each comes from (`build_url` is made by
/// [`BuildEnv::url`] when Concourse does not set it).
pub const OWNER_FIELDS: [(&str, &str); 7] = [
    ("team", "BUILD_TEAM_NAME"),
    ("pipeline", "BUILD_PIPELINE_NAME"),
    ("job", "BUILD_JOB_NAME"),
    ("build", "BUILD_NAME"),
    ("build_id", "BUILD_ID"),
    ("build_url", "BUILD_URL"),
    ("atc_url", "ATC_EXTERNAL_URL"),
];
const _: () = assert!(OWNER_FIELDS.len() <= MAX_OWNER_FIELDS);

/// Percent-encodes all but RFC 3986's unreserved characters, so that a name with `/`, `?`,
/// `#` or spaces stays one path segment (or one query value) of a link.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> BuildEnv {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        BuildEnv::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn describes_a_job_build() {
        let build = env(&[
            ("BUILD_ID", "345"),
            ("BUILD_NAME", "12"),
            ("BUILD_JOB_NAME", "deploy"),
            ("BUILD_PIPELINE_NAME", "prod"),
            ("BUILD_TEAM_NAME", "main"),
            ("ATC_EXTERNAL_URL", "https://ci.example.com/"),
        ]);
        assert_eq!(
            build.describe(),
            "main/prod/deploy #12 \
             (https://ci.example.com/teams/main/pipelines/prod/jobs/deploy/builds/12)"
        );
    }

    #[test]
    fn prefers_build_url() {
        let build = env(&[
            ("BUILD_ID", "345"),
            ("ATC_EXTERNAL_URL", "https://ci"),
            (
                "BUILD_URL",
                "https://ci/teams/main/pipelines/p/jobs/j/builds/12",
            ),
        ]);
        assert_eq!(
            build.url().as_deref(),
            Some("https://ci/teams/main/pipelines/p/jobs/j/builds/12")
        );
    }

    #[test]
    fn describes_one_off_and_unknown_builds() {
        assert_eq!(
            env(&[("BUILD_ID", "9"), ("BUILD_NAME", "3")]).describe(),
            "one-off build #3"
        );
        assert_eq!(env(&[("BUILD_ID", "9")]).describe(), "one-off build 9");
        assert_eq!(
            env(&[("BUILD_JOB_NAME", "")]).describe(),
            "a build outside Concourse"
        );
    }

    fn job_build() -> Vec<(&'static str, &'static str)> {
        vec![
            ("BUILD_ID", "345"),
            ("BUILD_NAME", "12"),
            ("BUILD_JOB_NAME", "deploy"),
            ("BUILD_PIPELINE_NAME", "prod"),
            ("BUILD_TEAM_NAME", "main"),
            ("ATC_EXTERNAL_URL", "https://ci.example.com"),
        ]
    }

    fn owner(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_job_builds_owner_has_every_field_and_its_job_link() {
        assert_eq!(
            env(&job_build()).owner(),
            owner(&[
                ("team", "main"),
                ("pipeline", "prod"),
                ("job", "deploy"),
                ("build", "12"),
                ("build_id", "345"),
                (
                    "build_url",
                    "https://ci.example.com/teams/main/pipelines/prod/jobs/deploy/builds/12"
                ),
                ("atc_url", "https://ci.example.com"),
            ])
        );
    }

    #[test]
    fn a_one_off_builds_owner_links_to_the_build_id() {
        let build = env(&[
            ("BUILD_ID", "9"),
            ("BUILD_NAME", "3"),
            ("BUILD_TEAM_NAME", "main"),
            ("ATC_EXTERNAL_URL", "https://ci.example.com/"),
        ]);
        assert_eq!(
            build.owner(),
            owner(&[
                ("team", "main"),
                ("build", "3"),
                ("build_id", "9"),
                ("build_url", "https://ci.example.com/builds/9"),
                ("atc_url", "https://ci.example.com/"),
            ]),
            "a one-off build has no pipeline or job, and its page is /builds/<id>"
        );
    }

    #[test]
    fn build_url_given_by_concourse_is_sent_as_it_is() {
        let mut vars = job_build();
        vars.push(("BUILD_URL", "https://ci.example.com/b/345?x=1"));
        assert_eq!(
            env(&vars).owner().get("build_url").map(String::as_str),
            Some("https://ci.example.com/b/345?x=1")
        );
    }

    #[test]
    fn nothing_known_sends_no_owner() {
        assert!(
            env(&[]).owner().is_empty(),
            "outside Concourse there is no owner"
        );
        assert!(env(&[("BUILD_JOB_NAME", "")]).owner().is_empty());
        assert_eq!(
            env(&[("BUILD_ID", "7")]).owner(),
            owner(&[("build_id", "7")]),
            "without ATC_EXTERNAL_URL there is no link, and only the known field is sent"
        );
    }

    #[test]
    fn link_segments_are_percent_encoded_and_instance_vars_kept() {
        let build = env(&[
            ("BUILD_NAME", "12.1"),
            ("BUILD_JOB_NAME", "deploy it/now"),
            ("BUILD_PIPELINE_NAME", "prod?#"),
            ("BUILD_TEAM_NAME", "tëam"),
            ("BUILD_PIPELINE_INSTANCE_VARS", r#"{"branch":"main"}"#),
            ("ATC_EXTERNAL_URL", "https://ci"),
        ]);
        assert_eq!(
            build.url().as_deref(),
            Some(
                "https://ci/teams/t%C3%ABam/pipelines/prod%3F%23/jobs/deploy%20it%2Fnow/builds/\
                 12.1?vars=%7B%22branch%22%3A%22main%22%7D"
            )
        );
    }

    #[test]
    fn an_owner_too_big_for_the_server_loses_fields_not_the_lock() {
        let long = "j".repeat(MAX_OWNER_BYTES);
        let mut vars = job_build();
        vars.retain(|(name, _)| *name != "BUILD_JOB_NAME");
        vars.push(("BUILD_JOB_NAME", &long));
        let owner = env(&vars).owner();
        let size: usize = owner.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            size <= MAX_OWNER_BYTES,
            "the owner must fit the server's limit, got {size} bytes"
        );
        assert!(!owner.contains_key("job"), "the field too long is left out");
        assert_eq!(owner.get("team").map(String::as_str), Some("main"));

        let vars = format!(r#"{{"branch":"{}"}}"#, "b".repeat(MAX_OWNER_VALUE));
        let instanced = env(&[
            ("BUILD_ID", "7"),
            ("BUILD_NAME", "1"),
            ("BUILD_JOB_NAME", "j"),
            ("BUILD_PIPELINE_NAME", "p"),
            ("BUILD_TEAM_NAME", "t"),
            ("BUILD_PIPELINE_INSTANCE_VARS", &vars),
            ("ATC_EXTERNAL_URL", "https://ci"),
        ]);
        let owner = instanced.owner();
        assert!(
            !owner.contains_key("build_url"),
            "a link longer than the server takes ({MAX_OWNER_VALUE} bytes) is left out"
        );
        assert_eq!(owner.get("build_id").map(String::as_str), Some("7"));

        let odd = env(&[("BUILD_NAME", "4\n2"), ("BUILD_ID", "7")]).owner();
        assert_eq!(
            odd,
            BTreeMap::from([("build_id".to_owned(), "7".to_owned())]),
            "a value with a control character, which the server refuses, is left out"
        );
    }

    #[test]
    fn an_owner_describes_its_build_again() {
        let build = env(&job_build());
        let read_back = BuildEnv::from_owner(&build.owner());
        assert_eq!(read_back.describe(), build.describe());
        assert!(read_back.is_known());
        let stranger = BuildEnv::from_owner(&owner(&[("host", "laptop")]));
        assert!(
            !stranger.is_known(),
            "an owner with only fields the resource does not know names no build"
        );
    }
}
