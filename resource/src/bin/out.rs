//! `/opt/resource/out DIR`: locks or unlocks, then prints the version. DIR is not used.

use std::process::ExitCode;

use locker_resource::BuildEnv;

fn main() -> ExitCode {
    locker_resource::main_with(|input| {
        let build = BuildEnv::from_lookup(|name| std::env::var(name).ok());
        locker_resource::put::run(input, &build, &mut std::io::stderr())
    })
}
