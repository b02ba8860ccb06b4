//! `/opt/resource/out DIR`: locks or unlocks, then prints the version. DIR is not used.
//!
//! SIGTERM and SIGINT (Concourse aborting the step) end it with 128 + the signal's number,
//! after giving back a place in a lock's queue; see `locker_resource::abort`.

use std::process::ExitCode;

use locker_resource::BuildEnv;
use locker_resource::abort::Abort;

fn main() -> ExitCode {
    let abort = Abort::on_signals().unwrap_or_else(|err| {
        eprintln!("note: cannot handle SIGTERM and SIGINT ({err}); an abort ends out at once");
        Abort::without_signals()
    });
    locker_resource::main_with(|input| {
        let build = BuildEnv::from_lookup(|name| std::env::var(name).ok());
        let outcome = locker_resource::put::run(input, &build, &abort, &mut std::io::stderr());
        abort.finish();
        outcome
    })
}
