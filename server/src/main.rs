//! The `locker` binary: without a command it reads the environment and runs the server; with
//! one it is the probe for containers or a client of a running server.

use std::process::ExitCode;

use locker_server::cli::args::{Args, Command};
use locker_server::config::Config;
use locker_server::{app, cli, healthcheck};
use tracing_subscriber::filter::LevelFilter;

/// mimalloc instead of glibc's malloc: with 64 clients cycling durable locks, the server spent
/// about 14 % of its CPU in glibc's allocator (including `malloc_consolidate`, which runs on every
/// allocation of 1 KiB or more), and with mimalloc it serves 15-19 % more cycles at 4-5 µs less
/// CPU per request (BENCHMARKS.md, fifth session). Built without transparent huge pages
/// (`no_thp`): with them, the start-up with 100,000 locks peaked at 65 MB instead of 50 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match Args::parse_with_help().command {
        None => serve(),
        Some(Command::Healthcheck) => run_healthcheck(),
        Some(Command::Import { file }) => run_import(&file),
        Some(Command::Client(command)) => cli::run(*command),
    }
}

fn serve() -> ExitCode {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    let stop = {
        let _runtime = runtime.enter();
        stop_signal()
    };
    match runtime.block_on(app::run(config, stop)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn run_import(file: &std::path::Path) -> ExitCode {
    let Some(url) = std::env::var("LOCKER_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return fail(
            "locker import copies into the database of LOCKER_DATABASE_URL, which is not set",
        );
    };
    match locker_server::import_state_file(file, &url) {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("import: {e}")),
    }
}

fn run_healthcheck() -> ExitCode {
    let result = Config::from_env().and_then(|config| healthcheck::probe(&config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("healthcheck: {e}")),
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed now, before anything is served
/// (inside the runtime's context), not when the future is first polled: a signal that comes
/// just after the first answers must stop the server cleanly, not kill it.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = signal(SignalKind::terminate())
        .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        match signals {
            Ok((mut term, mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("stop signal received; finishing in-flight requests");
    }
}
