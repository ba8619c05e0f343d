//! The coordinator's settings: a TOML file and/or flags, validated into a typed config at start-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use lbfleet_proto::members::check_address;
use lbfleet_proto::members::parse_members;
use lbfleet_proto::process::merge_settings;
pub use lbfleet_proto::process::ConfigError;
use serde::Deserialize;

use crate::raft::NodeId;

lbfleet_proto::settings! {
    /// Settings of `coordinator run`: flags, and the same names (with `_` for `-`) in the TOML config file.
    #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CoordinatorSettings {
        /// TOML config file with the same settings (node_id, listen, advertise, data_dir, tls_dir, bootstrap, ...).
        #[arg(long)]
        #[serde(skip)]
        pub config: Option<PathBuf>,
        /// This node's Raft id.
        #[arg(long)]
        pub node_id: Option<NodeId>,
        /// Address to bind the gRPC listener to.
        #[arg(long)]
        pub listen: Option<String>,
        /// Address peers and clients should use (default: the listen address).
        #[arg(long)]
        pub advertise: Option<String>,
        /// Where the sled database lives.
        #[arg(long)]
        pub data_dir: Option<PathBuf>,
        /// Directory with ca.pem and this node's certificate; the flag is the global --tls-dir.
        #[arg(skip)]
        pub tls_dir: Option<PathBuf>,
        /// `ID=ADDR,...`: the members of a new cluster; only read on the very first start.
        #[arg(long, value_delimiter = ',')]
        pub bootstrap: Option<Vec<String>>,
        /// Take a snapshot after this many log entries [default: 10000].
        #[arg(long)]
        pub snapshot_every: Option<u64>,
        /// Log entries kept behind a snapshot for lagging followers [default: 1000].
        #[arg(long)]
        pub keep_logs_behind_snapshot: Option<u64>,
        /// `IP:PORT` of the operators' HTTP listener (/metrics, /healthz, /readyz and the status
        /// page at /), plain and unauthenticated: keep it on 127.0.0.1 unless it is firewalled
        /// [default: off].
        #[arg(long)]
        pub metrics_listen: Option<String>,
        /// Binding changes kept in memory so a reconnecting agent gets a delta, not the full
        /// state; about 110 bytes each (1000 to 100000000) [default: 2000000].
        #[arg(long)]
        pub change_log_capacity: Option<u64>,
    }
}

/// The agents' change log keeps this many binding changes unless told otherwise.
pub const DEFAULT_CHANGE_LOG_CAPACITY: u64 = crate::state::changelog::DEFAULT_CAPACITY as u64;
/// Below this, a burst of binds pushes every reconnecting agent to a full sync.
pub const MIN_CHANGE_LOG_CAPACITY: u64 = 1_000;
/// Above this, the log alone could take tens of gigabytes.
pub const MAX_CHANGE_LOG_CAPACITY: u64 = 100_000_000;

/// A validated coordinator configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use; `None` means the bound listen address.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub tls_dir: PathBuf,
    pub bootstrap: BTreeMap<NodeId, String>,
    pub snapshot_every: u64,
    pub keep_logs_behind_snapshot: u64,
    /// Where the operators' HTTP listener binds; `None` leaves it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Binding changes the agents' change log retains.
    pub change_log_capacity: usize,
}

impl CoordinatorSettings {
    /// Lays these flags over the config file they name and validates the result.
    pub fn resolve(self) -> Result<CoordinatorConfig, ConfigError> {
        let file = self.config.clone();
        merge_settings(file.as_deref(), self)?.validate()
    }

    /// Checks every setting and produces the typed config.
    pub fn validate(self) -> Result<CoordinatorConfig, ConfigError> {
        let node_id = self.node_id.ok_or(ConfigError::Missing { field: "node_id" })?;
        let listen_text = self.listen.ok_or(ConfigError::Missing { field: "listen" })?;
        let listen: SocketAddr = listen_text.parse().map_err(|_| ConfigError::Invalid {
            field: "listen",
            value: listen_text.clone(),
            reason: "expected IP:PORT, e.g. 0.0.0.0:7400".into(),
        })?;
        let advertise = self.advertise;
        if advertise.is_none() && listen.ip().is_unspecified() {
            return Err(ConfigError::Invalid {
                field: "advertise",
                value: String::new(),
                reason: format!("listening on {listen} needs an advertise address that peers can reach"),
            });
        }
        if let Some(address) = &advertise {
            check_address("advertise", address)?;
        }
        let metrics_listen = self
            .metrics_listen
            .map(|text| {
                text.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                    field: "metrics_listen",
                    value: text.clone(),
                    reason: "expected IP:PORT, e.g. 127.0.0.1:7480".into(),
                })
            })
            .transpose()?;
        let change_log_capacity = change_log_capacity(self.change_log_capacity)?;
        let bootstrap = parse_members("bootstrap", &self.bootstrap.unwrap_or_default())?;
        if !bootstrap.is_empty() && !bootstrap.contains_key(&node_id) {
            return Err(ConfigError::Invalid {
                field: "bootstrap",
                value: format!("{bootstrap:?}"),
                reason: format!("the bootstrap members must include this node ({node_id})"),
            });
        }
        Ok(CoordinatorConfig {
            node_id,
            listen,
            advertise,
            data_dir: self.data_dir.ok_or(ConfigError::Missing { field: "data_dir" })?,
            tls_dir: self.tls_dir.ok_or(ConfigError::Missing { field: "tls_dir" })?,
            bootstrap,
            snapshot_every: self.snapshot_every.unwrap_or(10_000).max(1),
            keep_logs_behind_snapshot: self.keep_logs_behind_snapshot.unwrap_or(1_000),
            metrics_listen,
            change_log_capacity,
        })
    }
}

fn change_log_capacity(setting: Option<u64>) -> Result<usize, ConfigError> {
    let capacity = setting.unwrap_or(DEFAULT_CHANGE_LOG_CAPACITY);
    if !(MIN_CHANGE_LOG_CAPACITY..=MAX_CHANGE_LOG_CAPACITY).contains(&capacity) {
        return Err(ConfigError::Invalid {
            field: "change_log_capacity",
            value: capacity.to_string(),
            reason: format!("expected {MIN_CHANGE_LOG_CAPACITY} to {MAX_CHANGE_LOG_CAPACITY} changes"),
        });
    }
    usize::try_from(capacity).map_err(|_| ConfigError::Invalid {
        field: "change_log_capacity",
        value: capacity.to_string(),
        reason: "larger than this machine can address".into(),
    })
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::process::Settings;

    use super::*;

    fn settings() -> CoordinatorSettings {
        CoordinatorSettings {
            node_id: Some(1),
            listen: Some("127.0.0.1:7400".into()),
            data_dir: Some("/tmp/d".into()),
            tls_dir: Some("/tmp/t".into()),
            ..CoordinatorSettings::default()
        }
    }

    #[test]
    fn minimal_config_validates() {
        let config = settings().validate().unwrap();
        assert_eq!(config.node_id, 1);
        assert!(config.bootstrap.is_empty());
        assert_eq!(config.snapshot_every, 10_000);
        assert_eq!(config.metrics_listen, None, "the operators' listener is off unless asked for");
        assert_eq!(config.change_log_capacity, 2_000_000);
    }

    #[test]
    fn change_log_capacity_is_bounded() {
        let with = |n| CoordinatorSettings { change_log_capacity: Some(n), ..settings() }.validate();
        assert_eq!(with(1_000).unwrap().change_log_capacity, 1_000);
        assert_eq!(with(100_000_000).unwrap().change_log_capacity, 100_000_000);
        for bad in [0, 999, 100_000_001] {
            let err = with(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid change_log_capacity \"{bad}\": expected 1000 to 100000000 changes")
            );
        }
        let file: CoordinatorSettings = toml::from_str("change_log_capacity = 50_000").unwrap();
        assert_eq!(file.or(settings()).validate().unwrap().change_log_capacity, 50_000);
        let err = toml::from_str::<CoordinatorSettings>("change_log_capacity = -1").unwrap_err();
        assert!(err.to_string().contains("change_log_capacity"), "{err}");
    }

    #[test]
    fn metrics_listen_is_an_address() {
        let config =
            CoordinatorSettings { metrics_listen: Some("127.0.0.1:0".into()), ..settings() }.validate().unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:0".parse().unwrap()));
        let err =
            CoordinatorSettings { metrics_listen: Some("localhost".into()), ..settings() }.validate().unwrap_err();
        assert_eq!(err.to_string(), "invalid metrics_listen \"localhost\": expected IP:PORT, e.g. 127.0.0.1:7480");
        let file: CoordinatorSettings = toml::from_str("metrics_listen = \"127.0.0.1:7480\"").unwrap();
        assert_eq!(file.metrics_listen.as_deref(), Some("127.0.0.1:7480"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<CoordinatorSettings>("node_id = 1\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"));
        let err = toml::from_str::<CoordinatorSettings>("config = \"/other.toml\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"));
        let file: CoordinatorSettings =
            toml::from_str("tls_dir = \"/t\"\nkeep_logs_behind_snapshot = 5\nbootstrap = [\"1=a:1\"]").unwrap();
        assert_eq!(file.keep_logs_behind_snapshot, Some(5));
    }

    #[test]
    fn flags_parse_into_the_same_settings() {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            settings: CoordinatorSettings,
        }
        let run = <Run as clap::Parser>::parse_from([
            "run",
            "--node-id",
            "3",
            "--listen",
            "127.0.0.1:7400",
            "--bootstrap",
            "1=a:1,3=c:3",
            "--snapshot-every",
            "50",
            "--change-log-capacity",
            "5000",
        ]);
        assert_eq!(run.settings.node_id, Some(3));
        assert_eq!(run.settings.bootstrap, Some(vec!["1=a:1".to_string(), "3=c:3".to_string()]));
        assert_eq!(run.settings.snapshot_every, Some(50));
        assert_eq!(run.settings.change_log_capacity, Some(5000));
        assert_eq!(run.settings.tls_dir, None, "--tls-dir is the global flag");
    }

    #[test]
    fn missing_and_invalid_settings_name_themselves() {
        let err = CoordinatorSettings { node_id: None, ..settings() }.validate().unwrap_err();
        assert_eq!(err.to_string(), "missing setting node_id (set it in the config file or as --node-id)");
        let err = CoordinatorSettings { listen: Some("nope".into()), ..settings() }.validate().unwrap_err();
        assert!(err.to_string().starts_with("invalid listen \"nope\""));
        let err = CoordinatorSettings { listen: Some("0.0.0.0:7400".into()), ..settings() }.validate().unwrap_err();
        assert!(err.to_string().contains("advertise"));
    }

    #[test]
    fn bootstrap_members_parse() {
        let members = parse_members("bootstrap", &["1=a:1,2=b:2".into(), "3=c:3".into()]).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[&2], "b:2");
        assert!(parse_members("bootstrap", &["1=a:1,1=b:2".into()]).is_err());
        assert!(parse_members("bootstrap", &["x=a:1".into()]).is_err());
        assert!(parse_members("bootstrap", &["1=a".into()]).is_err());
        let err = CoordinatorSettings { bootstrap: Some(vec!["2=b:2".into()]), ..settings() }.validate().unwrap_err();
        assert!(err.to_string().contains("must include this node"));
    }

    #[test]
    fn flags_override_file() {
        let file = settings();
        let flags = CoordinatorSettings { node_id: Some(7), ..CoordinatorSettings::default() };
        assert_eq!(flags.or(file).validate().unwrap().node_id, 7);
    }
}
