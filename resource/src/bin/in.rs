//! `/opt/resource/in DIR`: writes the lock's state into DIR and prints the version.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use locker_resource::BuildEnv;

fn main() -> ExitCode {
    locker_resource::main_with(|input| -> anyhow::Result<_> {
        let dir: PathBuf = std::env::args_os()
            .nth(1)
            .context("usage: in DIR (Concourse passes the directory to fill)")?
            .into();
        let build = BuildEnv::from_lookup(|name| std::env::var(name).ok());
        Ok(locker_resource::get::run(
            input,
            &dir,
            &build,
            &mut std::io::stderr(),
        )?)
    })
}
