//! `lbfleet-agent`: applies this host's load-balancer state to the local HAProxy.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use lbfleet_agent::config::Args;
use lbfleet_agent::session;
use lbfleet_proto::process::EXIT_CONFIG;

fn main() -> ExitCode {
    let args = Args::parse();
    lbfleet_proto::process::init_logging("info");
    let config = match args.resolve() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = session::run(config) => result,
            _ = lbfleet_proto::process::shutdown_signal() => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
