//! `/opt/resource/check`: prints the lock's current version.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;

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
    let versions = locker_resource::check::run(&input)?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &versions)?;
    writeln!(stdout)?;
    Ok(())
}
