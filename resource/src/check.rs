//! `check`: the lock's current revision as the one and only version.

use crate::client::LockerClient;
use crate::config::Source;
use crate::protocol::{Request, Version};
use crate::{Error, resolve_lock_name};

/// Runs `check` on what Concourse wrote on stdin: always exactly one version, the current one
/// (`{"revision": "0"}` for a lock never used), whatever version was given.
pub fn run(input: &str) -> Result<Vec<Version>, Error> {
    let request = Request::from_stdin(input)?;
    let source = Source::from_json(&request.source)?;
    let name = resolve_lock_name(&source)?;
    let lock = LockerClient::new(&source)?.get_lock(&name)?;
    Ok(vec![Version::revision(lock.revision)])
}
