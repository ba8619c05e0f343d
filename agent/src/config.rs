//! The agent's settings: a TOML file and/or flags, validated into a typed config at start-up.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::haproxy::ReloadMode;
use crate::haproxy::RuntimeMode;

/// Applies this host's assigned load-balancer state to the local HAProxy container.
#[derive(Debug, Parser)]
#[command(name = "lbfleet-agent", version)]
pub struct Args {
    /// TOML config file with the same settings as the flags (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This host's id, as registered with `lbfleet host add` and named in its certificate.
    #[arg(long, env = "LBFLEET_HOST_ID")]
    pub host_id: Option<String>,
    /// Coordinator gRPC addresses, comma-separated; the agent follows the leader.
    #[arg(long, env = "LBFLEET_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Option<Vec<String>>,
    /// Directory with ca.pem and agent-<host-id>.pem/.key.
    #[arg(long, env = "LBFLEET_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Host directory bind-mounted at /var/run/haproxy in the HAProxy container (admin and master sockets).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// Host directory bind-mounted at /var/lib/haproxy/maps (the agent writes the map file there).
    #[arg(long)]
    pub map_dir: Option<PathBuf>,
    /// Host directory bind-mounted at /usr/local/etc/haproxy (the agent writes haproxy.cfg there).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Docker engine socket (default: the engine's usual socket, or DOCKER_HOST).
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
    /// How to reach the runtime API: socket, exec (docker exec socat) or auto.
    #[arg(long)]
    pub runtime: Option<String>,
    /// How to apply a new haproxy.cfg: hitless (reload) or restart (stop + start).
    #[arg(long)]
    pub reload: Option<String>,
    /// Overrides the HAProxy container name assigned by the coordinator.
    #[arg(long)]
    pub container: Option<String>,
    /// Seconds between reconciliations of HAProxy with the desired state.
    #[arg(long)]
    pub reconcile_interval: Option<f64>,
    /// Seconds between reports to the coordinator.
    #[arg(long)]
    pub report_interval: Option<f64>,
}

/// The settings as written in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host_id: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub tls_dir: Option<PathBuf>,
    pub socket_dir: Option<PathBuf>,
    pub map_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
    pub runtime: Option<String>,
    pub reload: Option<String>,
    pub container: Option<String>,
    pub reconcile_interval: Option<f64>,
    pub report_interval: Option<f64>,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub host_id: String,
    pub endpoints: Vec<String>,
    pub tls_dir: PathBuf,
    pub socket_dir: Option<PathBuf>,
    pub map_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
    pub runtime: RuntimeMode,
    pub reload: ReloadMode,
    pub container: Option<String>,
    pub reconcile_interval: Duration,
    pub report_interval: Duration,
}

pub use lbfleet_proto::process::ConfigError;

impl Args {
    /// Merges the flags over the config file and validates the result.
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => lbfleet_proto::process::read_config::<FileConfig>(path)?,
            None => FileConfig::default(),
        };
        let host_id = self.host_id.or(file.host_id).ok_or(ConfigError::Missing("host_id"))?;
        let endpoints: Vec<String> = self.endpoints.or(file.endpoints).ok_or(ConfigError::Missing("endpoints"))?;
        let endpoints: Vec<String> =
            endpoints.into_iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty() {
            return Err(ConfigError::Missing("endpoints"));
        }
        let runtime = match self.runtime.or(file.runtime).as_deref().unwrap_or("auto") {
            "auto" => RuntimeMode::Auto,
            "socket" => RuntimeMode::Socket,
            "exec" => RuntimeMode::Exec,
            other => {
                return Err(ConfigError::Invalid {
                    field: "runtime",
                    value: other.into(),
                    reason: "expected socket, exec or auto".into(),
                })
            }
        };
        let reload = match self.reload.or(file.reload).as_deref().unwrap_or("hitless") {
            "hitless" => ReloadMode::Hitless,
            "restart" => ReloadMode::Restart,
            other => {
                return Err(ConfigError::Invalid {
                    field: "reload",
                    value: other.into(),
                    reason: "expected hitless or restart".into(),
                })
            }
        };
        let seconds = |field: &'static str, value: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let value = value.unwrap_or(default);
            if !(0.01..=3600.0).contains(&value) {
                return Err(ConfigError::Invalid {
                    field,
                    value: value.to_string(),
                    reason: "expected 0.01 to 3600 seconds".into(),
                });
            }
            Ok(Duration::from_secs_f64(value))
        };
        Ok(AgentConfig {
            host_id,
            endpoints,
            tls_dir: self.tls_dir.or(file.tls_dir).ok_or(ConfigError::Missing("tls_dir"))?,
            socket_dir: self.socket_dir.or(file.socket_dir),
            map_dir: self.map_dir.or(file.map_dir),
            config_dir: self.config_dir.or(file.config_dir),
            docker_socket: self.docker_socket.or(file.docker_socket),
            runtime,
            reload,
            container: self.container.or(file.container),
            reconcile_interval: seconds(
                "reconcile_interval",
                self.reconcile_interval.or(file.reconcile_interval),
                10.0,
            )?,
            report_interval: seconds("report_interval", self.report_interval.or(file.report_interval), 5.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["lbfleet-agent", "--host-id", "lb-a", "--endpoints", "a:1,b:2", "--tls-dir", "/t"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn flags_resolve_with_defaults() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!(config.endpoints, ["a:1", "b:2"]);
        assert_eq!(config.runtime, RuntimeMode::Auto);
        assert_eq!(config.reconcile_interval, Duration::from_secs(10));
    }

    #[test]
    fn bad_values_name_themselves() {
        let err = args(&["--runtime", "ssh"]).resolve().unwrap_err();
        assert_eq!(err.to_string(), "invalid runtime \"ssh\": expected socket, exec or auto");
        let err = Args::parse_from(["lbfleet-agent"]).resolve().unwrap_err();
        assert!(err.to_string().contains("--host-id"), "{err}");
    }

    #[test]
    fn unknown_file_settings_are_refused() {
        let err = toml::from_str::<FileConfig>("host_id = \"a\"\nsocket = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }
}
