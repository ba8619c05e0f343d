//! The agent's settings: a TOML file and/or flags, validated into a typed config at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lbfleet_proto::process::merge_settings;
pub use lbfleet_proto::process::ConfigError;
use serde::Deserialize;

use crate::haproxy::ReloadMode;
use crate::haproxy::RuntimeMode;

/// Seconds between reconciliations when none is set.
const DEFAULT_RECONCILE_SECS: f64 = 10.0;
/// Seconds between reports when none is set.
const DEFAULT_REPORT_SECS: f64 = 5.0;
/// Least seconds between two reloads when none is set.
const DEFAULT_RELOAD_MIN_INTERVAL_SECS: f64 = 2.0;
/// Where the end-to-end probes reach HAProxy's frontend when nothing is set: a host that
/// publishes the frontend's port 80.
pub const DEFAULT_PROBE_ADDRESS: &str = "127.0.0.1:80";
/// Seconds between two probes of a sample of the bound FQDNs when none is set.
const DEFAULT_PROBE_INTERVAL_SECS: f64 = 300.0;
/// FQDNs in each periodic sample when none is set.
const DEFAULT_PROBE_SAMPLE: u32 = 10;
/// The most FQDNs one periodic sample may take.
const MAX_PROBE_SAMPLE: u32 = 1_000;

lbfleet_proto::settings! {
    /// Applies this host's assigned load-balancer state to the local HAProxy container.
    ///
    /// Every setting is a flag and, under the same name with `_` for `-`, a key of the config file.
    #[derive(Debug, Default, Parser, Deserialize)]
    #[command(name = "lbfleet-agent", version)]
    #[serde(deny_unknown_fields)]
    pub struct AgentSettings {
        /// TOML config file with the same settings as the flags (flags win).
        #[arg(long)]
        #[serde(skip)]
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
        /// How to reach the runtime API [default: auto].
        #[arg(long, value_enum)]
        pub runtime: Option<RuntimeMode>,
        /// How to apply a new haproxy.cfg [default: hitless].
        #[arg(long, value_enum)]
        pub reload: Option<ReloadMode>,
        /// Overrides the HAProxy container name assigned by the coordinator.
        #[arg(long)]
        pub container: Option<String>,
        /// Seconds between reconciliations of HAProxy with the desired state [default: 10].
        #[arg(long)]
        pub reconcile_interval: Option<f64>,
        /// Seconds between reports to the coordinator [default: 5].
        #[arg(long)]
        pub report_interval: Option<f64>,
        /// Least seconds between two reloads of HAProxy [default: 2]. The first config change after
        /// a quiet period reloads at once; changes arriving sooner wait and go in together. 0: no wait.
        #[arg(long)]
        pub reload_min_interval: Option<f64>,
        /// ADDR:PORT of the operator listener (/metrics, /healthz, /readyz), e.g. 127.0.0.1:9101 [default: off].
        #[arg(long)]
        pub metrics_listen: Option<String>,
        /// HOST:PORT of HAProxy's HTTP frontend as the agent reaches it, for the end-to-end probes [default: 127.0.0.1:80].
        #[arg(long)]
        pub probe_address: Option<String>,
        /// Seconds between two end-to-end probes of a sample of the bound FQDNs [default: 300].
        #[arg(long)]
        pub probe_interval: Option<f64>,
        /// FQDNs probed every probe_interval; 0 turns the periodic probes off (binds are still probed) [default: 10].
        #[arg(long)]
        pub probe_sample: Option<u32>,
    }
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host's id; also the identity in its certificate.
    pub host_id: String,
    /// Coordinator gRPC addresses, none empty.
    pub endpoints: Vec<String>,
    /// Directory with the CA and this host's certificate.
    pub tls_dir: PathBuf,
    /// Host directory shared with HAProxy's socket directory, if any.
    pub socket_dir: Option<PathBuf>,
    /// Host directory shared with HAProxy's map directory, if any.
    pub map_dir: Option<PathBuf>,
    /// Host directory shared with HAProxy's config directory, if any.
    pub config_dir: Option<PathBuf>,
    /// Docker engine socket; `None` for the engine's defaults.
    pub docker_socket: Option<PathBuf>,
    /// How the runtime API is reached.
    pub runtime: RuntimeMode,
    /// How a new `haproxy.cfg` is put into service.
    pub reload: ReloadMode,
    /// HAProxy container name overriding the coordinator's.
    pub container: Option<String>,
    /// Time between reconciliations.
    pub reconcile_interval: Duration,
    /// Time between reports.
    pub report_interval: Duration,
    /// Least time between two reloads; config changes arriving sooner are coalesced.
    pub reload_min_interval: Duration,
    /// Where the operator listener binds; `None`: no listener.
    pub metrics_listen: Option<SocketAddr>,
    /// HAProxy's HTTP frontend as the agent reaches it (`host:port`).
    pub probe_address: String,
    /// Time between two periodic samples of end-to-end probes.
    pub probe_interval: Duration,
    /// FQDNs in each periodic sample (0: none).
    pub probe_sample: usize,
}

impl AgentSettings {
    /// Lays these flags over the config file they name and validates the result.
    pub fn resolve(self) -> Result<AgentConfig, ConfigError> {
        let file = self.config.clone();
        merge_settings(file.as_deref(), self)?.validate()
    }

    /// Checks every setting and produces the typed config.
    pub fn validate(self) -> Result<AgentConfig, ConfigError> {
        let host_id = self.host_id.ok_or(ConfigError::Missing { field: "host_id" })?;
        let endpoints: Vec<String> = self
            .endpoints
            .ok_or(ConfigError::Missing { field: "endpoints" })?
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ConfigError::Missing { field: "endpoints" });
        }
        Ok(AgentConfig {
            host_id,
            endpoints,
            tls_dir: self.tls_dir.ok_or(ConfigError::Missing { field: "tls_dir" })?,
            socket_dir: self.socket_dir,
            map_dir: self.map_dir,
            config_dir: self.config_dir,
            docker_socket: self.docker_socket,
            runtime: self.runtime.unwrap_or(RuntimeMode::Auto),
            reload: self.reload.unwrap_or(ReloadMode::Hitless),
            container: self.container,
            reconcile_interval: seconds("reconcile_interval", self.reconcile_interval, DEFAULT_RECONCILE_SECS)?,
            report_interval: seconds("report_interval", self.report_interval, DEFAULT_REPORT_SECS)?,
            reload_min_interval: reload_interval(self.reload_min_interval)?,
            metrics_listen: listen_address(self.metrics_listen)?,
            probe_address: probe_address(self.probe_address)?,
            probe_interval: probe_interval(self.probe_interval)?,
            probe_sample: probe_sample(self.probe_sample)?,
        })
    }
}

/// An interval setting (`default` when unset) as a duration, between 0.01 s and an hour.
fn seconds(field: &'static str, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if !(0.01..=3600.0).contains(&value) {
        return Err(ConfigError::Invalid {
            field,
            value: value.to_string(),
            reason: "expected 0.01 to 3600 seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// `reload_min_interval` as a duration: 0 (no wait) to an hour.
fn reload_interval(value: Option<f64>) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(DEFAULT_RELOAD_MIN_INTERVAL_SECS);
    if !(0.0..=3600.0).contains(&value) {
        return Err(ConfigError::Invalid {
            field: "reload_min_interval",
            value: value.to_string(),
            reason: "expected 0 to 3600 seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// `metrics_listen` as a socket address (an IP and a port; port 0 picks a free one).
fn listen_address(value: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    value.trim().parse().map(Some).map_err(|_| ConfigError::Invalid {
        field: "metrics_listen",
        value,
        reason: "expected IP:PORT, e.g. 127.0.0.1:9101".into(),
    })
}

/// `probe_address` as `host:port`, the host a name or an IP.
fn probe_address(value: Option<String>) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| DEFAULT_PROBE_ADDRESS.to_owned()).trim().to_owned();
    let valid = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if !valid {
        return Err(ConfigError::Invalid {
            field: "probe_address",
            value,
            reason: "expected HOST:PORT, e.g. 127.0.0.1:80".into(),
        });
    }
    Ok(value)
}

/// `probe_interval` as a duration: 1 s to a day.
fn probe_interval(value: Option<f64>) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(DEFAULT_PROBE_INTERVAL_SECS);
    if !(1.0..=86_400.0).contains(&value) {
        return Err(ConfigError::Invalid {
            field: "probe_interval",
            value: value.to_string(),
            reason: "expected 1 to 86400 seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(value))
}

/// `probe_sample`: 0 (no periodic probes) to `MAX_PROBE_SAMPLE`.
fn probe_sample(value: Option<u32>) -> Result<usize, ConfigError> {
    let value = value.unwrap_or(DEFAULT_PROBE_SAMPLE);
    if value > MAX_PROBE_SAMPLE {
        return Err(ConfigError::Invalid {
            field: "probe_sample",
            value: value.to_string(),
            reason: format!("expected 0 to {MAX_PROBE_SAMPLE}"),
        });
    }
    Ok(value as usize)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(extra: &[&str]) -> AgentSettings {
        let mut argv = vec!["lbfleet-agent", "--host-id", "lb-a", "--endpoints", "a:1,b:2", "--tls-dir", "/t"];
        argv.extend_from_slice(extra);
        AgentSettings::parse_from(argv)
    }

    fn config_file(dir: &Path, text: &str) -> String {
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn flags_resolve_with_defaults() {
        let config = args(&[]).resolve().unwrap();
        assert_eq!(config.endpoints, ["a:1", "b:2"]);
        assert_eq!(config.runtime, RuntimeMode::Auto);
        assert_eq!(config.reload, ReloadMode::Hitless);
        assert_eq!(config.reconcile_interval, Duration::from_secs(10));
        assert_eq!(config.report_interval, Duration::from_secs(5));
        assert_eq!(config.reload_min_interval, Duration::from_secs(2));
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.probe_address, "127.0.0.1:80");
        assert_eq!((config.probe_interval, config.probe_sample), (Duration::from_secs(300), 10));
    }

    #[test]
    fn operator_listener_and_probe_settings() {
        let config =
            args(&["--metrics-listen", "127.0.0.1:0", "--probe-address", "haproxy-lb-1:80"]).resolve().unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config.probe_address, "haproxy-lb-1:80");
        let err = args(&["--metrics-listen", "localhost"]).resolve().unwrap_err();
        assert_eq!(err.to_string(), "invalid metrics_listen \"localhost\": expected IP:PORT, e.g. 127.0.0.1:9101");
        let err = args(&["--probe-address", "haproxy"]).resolve().unwrap_err();
        assert!(err.to_string().contains("expected HOST:PORT"), "{err}");
        assert!(args(&["--probe-interval", "0.5"]).resolve().is_err());
        assert!(args(&["--probe-sample", "5000"]).resolve().is_err());
        assert_eq!(args(&["--probe-sample", "0"]).resolve().unwrap().probe_sample, 0);
        let dir = tempfile::tempdir().unwrap();
        let file =
            config_file(dir.path(), "metrics_listen = \"0.0.0.0:9101\"\nprobe_interval = 60.0\nprobe_sample = 3\n");
        let config = args(&["--config", &file]).resolve().unwrap();
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9101".parse().unwrap()));
        assert_eq!((config.probe_interval, config.probe_sample), (Duration::from_secs(60), 3));
    }

    #[test]
    fn modes_take_their_names_as_flags() {
        let config = args(&["--runtime", "exec", "--reload", "restart"]).resolve().unwrap();
        assert_eq!((config.runtime, config.reload), (RuntimeMode::Exec, ReloadMode::Restart));
        assert_eq!(args(&["--runtime", "socket"]).resolve().unwrap().runtime, RuntimeMode::Socket);
    }

    #[test]
    fn bad_values_name_themselves() {
        let err = AgentSettings::try_parse_from(["lbfleet-agent", "--runtime", "ssh"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("'ssh'") && err.to_string().contains("socket, exec, auto"), "{err}");
        assert_eq!(args(&["--reload-min-interval", "0"]).resolve().unwrap().reload_min_interval, Duration::ZERO);
        let err = args(&["--reload-min-interval=-1"]).resolve().unwrap_err();
        assert_eq!(err.to_string(), "invalid reload_min_interval \"-1\": expected 0 to 3600 seconds");
        let err = args(&["--report-interval", "0"]).resolve().unwrap_err();
        assert_eq!(err.to_string(), "invalid report_interval \"0\": expected 0.01 to 3600 seconds");
        let err = AgentSettings::parse_from(["lbfleet-agent"]).resolve().unwrap_err();
        assert!(err.to_string().contains("--host-id"), "{err}");
    }

    #[test]
    fn the_file_fills_what_the_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = config_file(
            dir.path(),
            "host_id = \"lb-file\"\nendpoints = [\"c:3\"]\ntls_dir = \"/f\"\nruntime = \"socket\"\n\
             reload = \"restart\"\nreconcile_interval = 0.5\nreload_min_interval = 7.5\n",
        );
        let config =
            AgentSettings::parse_from(["lbfleet-agent", "--config", &file, "--host-id", "lb-flag"]).resolve().unwrap();
        assert_eq!(config.host_id, "lb-flag");
        assert_eq!(config.endpoints, ["c:3"]);
        assert_eq!((config.runtime, config.reload), (RuntimeMode::Socket, ReloadMode::Restart));
        assert_eq!(config.reconcile_interval, Duration::from_millis(500));
        assert_eq!(config.reload_min_interval, Duration::from_millis(7500));
        let flagged = AgentSettings::parse_from(["lbfleet-agent", "--config", &file, "--runtime", "exec"]);
        assert_eq!(flagged.resolve().unwrap().runtime, RuntimeMode::Exec);
    }

    #[test]
    fn unknown_or_bad_file_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = config_file(dir.path(), "host_id = \"a\"\nsocket = \"/x\"");
        let err = AgentSettings::parse_from(["lbfleet-agent", "--config", &file]).resolve().unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let file = config_file(dir.path(), "runtime = \"ssh\"");
        let err = AgentSettings::parse_from(["lbfleet-agent", "--config", &file]).resolve().unwrap_err();
        assert!(err.to_string().contains("unknown variant `ssh`"), "{err}");
        let file = config_file(dir.path(), "config = \"/other.toml\"");
        let err = AgentSettings::parse_from(["lbfleet-agent", "--config", &file]).resolve().unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
