//! `lbfleet`: the operator CLI, which also runs coordinator nodes and creates dev certificates.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use lbfleet_coordinator::ctl::cli::Cli;
use lbfleet_coordinator::ctl::cli::Command;
use lbfleet_coordinator::ctl::cli::CoordinatorCommand;
use lbfleet_coordinator::ctl::cli::PkiCommand;
use lbfleet_coordinator::ctl::cli::RunArgs;
use lbfleet_coordinator::ctl::commands;
use lbfleet_coordinator::daemon::config::RawConfig;
use lbfleet_coordinator::daemon::server;
use lbfleet_coordinator::pki;
use lbfleet_proto::process::EXIT_CONFIG;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;

fn main() -> ExitCode {
    let cli = Cli::parse();
    lbfleet_proto::process::init_logging("info,openraft=warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Pki(PkiCommand::Init { dir, coordinator, agent, admin }) => {
            pki_init(&dir, &coordinator, &agent, &admin)
        }
        Command::Coordinator(CoordinatorCommand::Run(args)) => {
            let config = match run_config(args, cli.global.tls_dir.clone()) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime.block_on(server::run(config))
        }
        command => runtime.block_on(commands::run(&cli.global, command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Merges `coordinator run` flags over the config file and validates the result.
fn run_config(
    args: RunArgs,
    tls_dir: Option<std::path::PathBuf>,
) -> Result<lbfleet_coordinator::daemon::config::CoordinatorConfig, lbfleet_coordinator::daemon::config::ConfigError> {
    let file = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let flags = RawConfig {
        node_id: args.node_id,
        listen: args.listen,
        advertise: args.advertise,
        data_dir: args.data_dir,
        tls_dir,
        bootstrap: args.bootstrap,
        snapshot_every: args.snapshot_every,
        keep_logs_behind_snapshot: None,
    };
    flags.or(file).validate()
}

fn pki_init(
    dir: &std::path::Path,
    coordinators: &[String],
    agents: &[String],
    admins: &[String],
) -> anyhow::Result<()> {
    let mut identities = Vec::new();
    for (role, names) in [(Role::Coordinator, coordinators), (Role::Agent, agents), (Role::Admin, admins)] {
        for name in names {
            identities.push(Identity::new(role, name)?);
        }
    }
    for issued in pki::init(dir, &identities)? {
        let what = if issued.created { "created" } else { "kept" };
        println!("{what} {} ({})", issued.cert.display(), issued.identity);
    }
    Ok(())
}
