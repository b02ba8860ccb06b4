//! `/opt/resource/out DIR`: locks or unlocks, then prints the version. DIR is not used.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use locker_resource::BuildEnv;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading stdin")?;
    let build = BuildEnv::from_lookup(|name| std::env::var(name).ok());
    let output = locker_resource::put::run(&input, &build, &mut std::io::stderr())?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &output)?;
    writeln!(stdout)?;
    Ok(())
}
