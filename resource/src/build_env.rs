//! The build a `get` or `put` runs for, from Concourse's build variables; used in log lines so
//! that whoever reads a waiting build's log knows who is waiting.

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
            team_name: get("BUILD_TEAM_NAME"),
            atc_external_url: get("ATC_EXTERNAL_URL"),
            build_url: get("BUILD_URL"),
        }
    }

    /// The build's page: `BUILD_URL`, or made from `ATC_EXTERNAL_URL` and `BUILD_ID`.
    pub fn url(&self) -> Option<String> {
        if let Some(url) = &self.build_url {
            return Some(url.clone());
        }
        match (&self.atc_external_url, &self.id) {
            (Some(atc), Some(id)) => Some(format!("{}/builds/{id}", atc.trim_end_matches('/'))),
            _ => None,
        }
    }

    /// Who is asking, for log lines: `main/deploy/prod #12 (https://ci/builds/345)`.
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
            _ => "a build outside Concourse".to_owned(),
        };
        match self.url() {
            Some(url) => format!("{who} ({url})"),
            None => who,
        }
    }
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
            "main/prod/deploy #12 (https://ci.example.com/builds/345)"
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
}
