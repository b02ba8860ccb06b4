//! A claim that ends with its build: the server asks Concourse whether the build that holds
//! a claim (`"hold": "build"`) still runs, and releases the claim once it has finished.
//!
//! Every [`Concourse::poll`](crate::config::Concourse) the watcher reads the published table,
//! gathers the builds of the holders held for a build whose owner's `atc_url` is this server's
//! `CONCOURSE_URL` (one question per build however many locks it holds, a few at a time), and
//! asks [`client::ConcourseClient`]. A build that has `succeeded`, `failed`, `errored` or been
//! `aborted` has its holders' claims released through the store: a durable change like an
//! unlock, with the history reason `build finished: STATUS`. Never on doubt: while Concourse
//! cannot be reached, fails, or refuses the credentials, nothing is released, and the outage
//! is logged once (and once when it ends); a build Concourse does not know (404) keeps its
//! claims too, logged once per build. Watching needs no state of its own: after a restart it
//! finds the watched claims in the table again.

pub mod client;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;

use crate::config::{Concourse, normalise_url};
use crate::domain::{Claim, Hold, LockTable, Op, Owner};
use crate::metrics::Metrics;
use crate::store::{LockStore, Request};
use client::{AskError, BuildAnswer, ConcourseClient};

/// How many questions to Concourse are in flight at once.
const IN_FLIGHT: usize = 4;

/// The statuses after which a build runs no more.
const FINISHED: [&str; 4] = ["succeeded", "failed", "errored", "aborted"];

/// What the watcher last learnt, for the API and the dashboard.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Each watched build's last known status and when it was asked.
    pub builds: HashMap<u64, (String, SystemTime)>,
    /// Why Concourse gives no answer to rely on, since when; `None` while it answers.
    pub outage: Option<(String, SystemTime)>,
}

/// The watcher's findings, shared with readers.
#[derive(Clone, Default)]
pub struct Watch {
    seen: Arc<Mutex<Arc<Seen>>>,
}

impl Watch {
    /// What the watcher knows now.
    pub fn seen(&self) -> Arc<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut Seen)) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        change(Arc::make_mut(&mut seen));
    }
}

/// The builds whose holders are watched, each with the locks and requestors it holds.
pub fn watched(table: &LockTable, concourse_url: &str) -> BTreeMap<u64, Vec<(String, String)>> {
    let mut builds: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for (name, lock) in &table.locks {
        for holder in lock.locked_by.entries() {
            if let Some(build) = watched_build(holder.hold, &holder.owner, concourse_url) {
                builds
                    .entry(build)
                    .or_default()
                    .push((name.to_string(), holder.requestor.clone()));
            }
        }
    }
    builds
}

/// The build a holder is watched for: held for a build, with a `build_id`, on this Concourse.
pub fn watched_build(hold: Hold, owner: &Owner, concourse_url: &str) -> Option<u64> {
    if hold != Hold::Build {
        return None;
    }
    let on_this_concourse = owner
        .get("atc_url")
        .and_then(|url| normalise_url(url))
        .is_some_and(|url| url == concourse_url);
    if !on_this_concourse {
        return None;
    }
    owner.get("build_id")?.parse().ok()
}

/// Why a claim may not be held for a build here, if it may not: the server must watch
/// Concourse, and the owner must name a build on it (a claim that looks watched but is not is
/// worse than none).
pub fn refuse_hold(owner: Option<&Owner>, concourse: Option<&Concourse>) -> Option<String> {
    let Some(concourse) = concourse else {
        return Some(
            "\"hold\": \"build\" needs a server that asks Concourse about builds, and this one does not (CONCOURSE_URL is not set); hold until unlocked, or set CONCOURSE_URL".into(),
        );
    };
    let owner = owner.cloned().unwrap_or_default();
    let Some(build) = owner.get("build_id") else {
        return Some("\"hold\": \"build\" needs the build in field 'owner.build_id'".into());
    };
    if build.parse::<u64>().is_err() {
        return Some(format!(
            "field 'owner.build_id' ({build:?}) is not a Concourse build id (a number)"
        ));
    }
    match owner.get("atc_url") {
        None => Some(format!(
            "\"hold\": \"build\" needs the Concourse the build runs on in field 'owner.atc_url' ({})",
            concourse.url
        )),
        Some(url) if normalise_url(url).as_deref() != Some(&concourse.url) => Some(format!(
            "field 'owner.atc_url' ({url}) is not the Concourse this server watches ({}); such a claim cannot be watched, so hold it until unlocked",
            concourse.url
        )),
        Some(_) => None,
    }
}

/// Asks Concourse about the watched builds every `poll`, until the server stops.
pub async fn run(
    store: LockStore,
    client: ConcourseClient,
    concourse: Concourse,
    watch: Watch,
    metrics: Arc<Metrics>,
) {
    let stopping = store.stopping();
    tokio::pin!(stopping);
    let mut told_missing: HashSet<u64> = HashSet::new();
    loop {
        if !round(&store, &client, &concourse.url, &watch, &mut told_missing).await {
            metrics.concourse_failed();
        }
        tokio::select! {
            () = tokio::time::sleep(concourse.poll) => {}
            () = &mut stopping => return,
        }
    }
}

/// One round: every watched build asked once, finished ones released. False when Concourse
/// gave no answer to rely on.
async fn round(
    store: &LockStore,
    client: &ConcourseClient,
    url: &str,
    watch: &Watch,
    told_missing: &mut HashSet<u64>,
) -> bool {
    let builds = watched(&store.snapshot(), url);
    watch.update(|seen| seen.builds.retain(|id, _| builds.contains_key(id)));
    told_missing.retain(|id| builds.contains_key(id));
    if builds.is_empty() {
        return true;
    }
    let answers: Vec<(u64, Result<BuildAnswer, AskError>)> =
        futures_util::stream::iter(builds.keys().copied())
            .map(|id| {
                let client = client.clone();
                async move {
                    let asked = tokio::task::spawn_blocking(move || client.build(id)).await;
                    let answer = asked.unwrap_or_else(|e| {
                        Err(AskError::Failing(format!("the request task failed: {e}")))
                    });
                    (id, answer)
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    let now = SystemTime::now();
    let mut failure = None;
    for (id, answer) in answers {
        match answer {
            Ok(BuildAnswer::Status(status)) => {
                watch.update(|seen| {
                    seen.builds.insert(id, (status.clone(), now));
                });
                if FINISHED.contains(&status.as_str()) {
                    release(store, id, &status, &builds[&id]).await;
                }
            }
            Ok(BuildAnswer::NotFound) => {
                watch.update(|seen| {
                    seen.builds.insert(id, ("not found".into(), now));
                });
                if told_missing.insert(id) {
                    tracing::warn!(
                        build = id,
                        "Concourse does not know build {id} (404); its claims are kept. Is CONCOURSE_URL right, and may its user see the build's team?"
                    );
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    let before = watch.seen().outage.clone();
    let answered = failure.is_none();
    match (failure, before) {
        (Some(e), None) => {
            tracing::error!(error = %e, "cannot learn whether watched builds still run; no claim is released until Concourse answers");
            watch.update(|seen| seen.outage = Some((e.to_string(), now)));
        }
        (None, Some((_, since))) => {
            let lasted = now.duration_since(since).unwrap_or(Duration::ZERO);
            tracing::info!(
                "Concourse answers again (after {}); watching builds",
                humantime::format_duration(Duration::from_secs(lasted.as_secs()))
            );
            watch.update(|seen| seen.outage = None);
        }
        _ => {}
    }
    answered
}

/// Releases the claims of build `id`, which finished with `status`.
async fn release(store: &LockStore, id: u64, status: &str, holders: &[(String, String)]) {
    for (name, requestor) in holders {
        let request = Request {
            name: name.clone(),
            op: Op::BuildFinished,
            claim: Claim {
                owner: Some(Owner::from([("build_id".to_owned(), id.to_string())])),
                reason: Some(format!("build finished: {status}")),
                ..Claim::new("", requestor.clone())
            },
        };
        match store.submit(request).await {
            Ok(decision) if decision.verdict == crate::domain::Verdict::Released => {
                tracing::info!(lock = %name, requestor = %requestor, build = id, "released: build finished: {status}");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(lock = %name, build = id, error = %e, "could not release the claims of a finished build; trying again at the next poll");
            }
        }
    }
}
