//! `lbfleet-agent`: applies this host's load-balancer state to the local HAProxy.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lbfleet_agent::config::AgentSettings;
use lbfleet_agent::observers::Observers;
use lbfleet_agent::session;
use lbfleet_proto::ops_http;
use lbfleet_proto::process::EXIT_CONFIG;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

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
        let observers = Observers::new(&config);
        let _listener = match config.metrics_listen {
            Some(address) => match serve_ops(address, &observers).await {
                Ok(listener) => Some(listener),
                Err(error) => return Err(error),
            },
            None => None,
        };
        // Under systemd (Type=notify): started, and watched while the agent's state answers.
        let ready = observers.ready.clone();
        let _watchdog = lbfleet_proto::systemd::ready_and_watch(move || {
            let ready = ready.clone();
            async move { ready.responsive().await }
        })
        .map(AbortOnDropHandle::new);
        tokio::select! {
            result = session::run_with(config, observers) => result.map_err(|e| e.to_string()),
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

/// Opens the operator listener (/metrics, /healthz, /readyz) on `address`.
async fn serve_ops(address: SocketAddr, observers: &Observers) -> Result<AbortOnDropHandle<()>, String> {
    let (listener, local_addr) =
        ops_http::bind(&address.to_string()).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    info!(%local_addr, "metrics listening");
    let ready = observers.ready.clone();
    let readiness: ops_http::Readiness = Arc::new(move || {
        let ready = ready.clone();
        Box::pin(async move { ready.check().await })
    });
    let state = ops_http::OpsState { registry: observers.metrics.registry_handle(), readiness };
    Ok(AbortOnDropHandle::new(ops_http::serve(listener, ops_http::router(state))))
}
