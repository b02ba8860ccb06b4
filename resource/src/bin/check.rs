//! `/opt/resource/check`: prints the lock's current version.

use std::process::ExitCode;

fn main() -> ExitCode {
    locker_resource::main_with(locker_resource::check::run)
}
