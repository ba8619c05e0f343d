//! `lbfleet`: the operator CLI, which also runs coordinator nodes and creates dev certificates.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
use lbfleet_coordinator::ctl::cli::GlobalArgs;
use lbfleet_coordinator::ctl::cli::PkiCommand;
use lbfleet_coordinator::ctl::cli::PkiIdentities;
use lbfleet_coordinator::ctl::commands;
use lbfleet_coordinator::ctl::output;
use lbfleet_coordinator::daemon::config::CoordinatorSettings;
use lbfleet_coordinator::daemon::restore;
use lbfleet_coordinator::daemon::restore::RestoreArgs;
use lbfleet_coordinator::daemon::server;
use lbfleet_coordinator::pki;
use lbfleet_proto::process::EXIT_CONFIG;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;

/// Control plane for HAProxy fleets: bind FQDNs to shards, manage topology, inspect status.
#[derive(Debug, Parser)]
#[command(name = "lbfleet", version)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// lbfleet's commands: the local ones, then those that talk to the coordinator group.
#[derive(Debug, Subcommand)]
enum Command {
    /// Certificates for a development or test deployment.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Runs a coordinator node.
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    #[command(flatten)]
    Client(lbfleet_coordinator::ctl::cli::Command),
}

/// `lbfleet coordinator ...`
#[derive(Debug, Subcommand)]
enum CoordinatorCommand {
    /// Runs a coordinator node until SIGINT/SIGTERM.
    Run(CoordinatorSettings),
    /// Creates a new single-node group from a snapshot file (`lbfleet snapshot save`) in an empty data dir.
    Restore(RestoreArgs),
}

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
        Command::Pki(PkiCommand::Init(asked)) => pki_issue(&asked, false),
        Command::Pki(PkiCommand::Renew(asked)) => pki_issue(&asked, true),
        Command::Coordinator(CoordinatorCommand::Run(settings)) => {
            // --tls-dir is global to every command; for `coordinator run` it is one of the settings.
            let settings = CoordinatorSettings { tls_dir: cli.global.tls_dir.clone(), ..settings };
            let config = match settings.resolve() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime.block_on(server::run(config))
        }
        Command::Coordinator(CoordinatorCommand::Restore(args)) => {
            let target = match args.resolve() {
                Ok(target) => target,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime.block_on(restore::restore(&args.from, &target)).map_err(anyhow::Error::from).map(|restored| {
                let member = (target.node_id, target.address.as_str());
                output::snapshot_restored(
                    cli.global.json,
                    &args.from,
                    &restored.header,
                    &target.data_dir,
                    member,
                    restored.version,
                )
            })
        }
        Command::Client(command) => {
            let result = runtime.block_on(commands::run(&cli.global, command));
            // Dropping the runtime would wait for name lookups still stuck in its blocking pool (a
            // resolver that does not answer): the answer is printed, the deadline has passed.
            runtime.shutdown_background();
            result
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `pki init` (`renew` false) or `pki renew`: prints each identity's bundle and serial.
fn pki_issue(asked: &PkiIdentities, renew: bool) -> anyhow::Result<()> {
    let mut identities = Vec::new();
    for (role, names) in
        [(Role::Coordinator, &asked.coordinator), (Role::Agent, &asked.agent), (Role::Admin, &asked.admin)]
    {
        for name in names {
            identities.push(Identity::new(role, name)?);
        }
    }
    let issued = if renew { pki::renew(&asked.dir, &identities)? } else { pki::init(&asked.dir, &identities)? };
    for issued in issued {
        let what = match (renew, issued.created) {
            (true, _) => "renewed",
            (false, true) => "created",
            (false, false) => "kept",
        };
        println!("{what} {} in {} (serial {})", issued.identity, issued.bundle.display(), issued.serial);
    }
    Ok(())
}
