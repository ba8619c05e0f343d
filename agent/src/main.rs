//! `lbfleet-agent`: applies this host's load-balancer state to the local HAProxy.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use lbfleet_agent::config::AgentSettings;
use lbfleet_agent::session;
use lbfleet_proto::process::EXIT_CONFIG;

fn main() -> ExitCode {
    let settings = match AgentSettings::try_parse() {
        Ok(settings) => settings,
        Err(error) => {
            // A flag value the agent cannot use is a bad config like any other; --help and --version are not.
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    lbfleet_proto::process::init_logging("info");
    let config = match settings.resolve() {
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
