//! `in` (Concourse's get step): report the lock's current state into files.
//!
//! It never fails because the lock moved on since the requested version was made: the implicit
//! get after every put must not break a pipeline. It echoes the requested version and describes
//! the lock as it is now.
//!
//! Every file is always written, empty when there is nothing to say (as `key` is when the lock
//! is free), so a task can read one without first testing that it exists: `token` and
//! `expires_at` are empty when the lock is free, was taken without a ttl, or the server has no
//! leases; `holders` is `[]` then.

use std::io::Write;
use std::path::Path;

use crate::client::{Lock, LockerClient};
use crate::config::{InParams, Source};
use crate::protocol::{MetadataField, ProtocolError, Request, StepOutput, Version};
use crate::{BuildEnv, Error, resolve_lock_name};

/// Runs `in` on what Concourse wrote on stdin, writing the files into `dir`.
pub fn run(
    input: &str,
    dir: &Path,
    build: &BuildEnv,
    log: &mut dyn Write,
) -> Result<StepOutput, Error> {
    let request = Request::from_stdin(input)?;
    let source = Source::from_json(&request.source)?;
    InParams::from_json(&request.params)?;
    let version = request.version.ok_or(ProtocolError::NoVersion)?;
    let name = resolve_lock_name(&source)?;
    let lock = LockerClient::new(&source)?.get_lock(&name)?;

    let current = Version::revision(lock.revision);
    if current != version {
        let _ = writeln!(
            log,
            "lock '{name}' has changed since version {}: now at revision {} (asked by {})",
            serde_json::to_string(&version).unwrap_or_default(),
            lock.revision,
            build.describe()
        );
    }
    write_files(dir, &name, &lock)?;
    let mut metadata = vec![
        MetadataField::new("lock", name),
        MetadataField::new("key", lock.key.clone()),
        MetadataField::new("holders", lock.locked_by_json()),
        MetadataField::new("revision", lock.revision.to_string()),
    ];
    if let Some(token) = lock.token {
        metadata.push(MetadataField::new("token", token.to_string()));
    }
    if let Some(expires_at) = lock.lease_ends() {
        metadata.push(MetadataField::new("expires_at", expires_at));
    }
    Ok(StepOutput { version, metadata })
}

/// The files `in` leaves for the build's tasks.
fn write_files(dir: &Path, name: &str, lock: &Lock) -> Result<(), Error> {
    let write = |file: &str, contents: &str| {
        let path = dir.join(file);
        std::fs::write(&path, contents).map_err(|err| Error::Write {
            path: path.display().to_string(),
            cause: err.to_string(),
        })
    };
    std::fs::create_dir_all(dir).map_err(|err| Error::Write {
        path: dir.display().to_string(),
        cause: err.to_string(),
    })?;
    write("name", name)?;
    write("key", &lock.key)?;
    write("locked_by", &lock.locked_by_json())?;
    write("holders", &lock.holders_json())?;
    write(
        "token",
        &lock
            .token
            .map(|token| token.to_string())
            .unwrap_or_default(),
    )?;
    write("expires_at", lock.lease_ends().unwrap_or_default())?;
    write(
        "lock",
        &serde_json::to_string_pretty(&lock.json).unwrap_or_default(),
    )?;
    write("revision", &lock.revision.to_string())?;
    Ok(())
}
