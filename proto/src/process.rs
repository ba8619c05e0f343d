//! Process plumbing both daemons share: settings from a config file and flags, logging set-up and the shutdown signal.

use std::path::Path;
use std::path::PathBuf;

use serde::de::DeserializeOwned;

/// Exit code for a configuration a daemon refuses (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Why a daemon's configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or holds an unknown setting or a value of the wrong kind.
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A required setting is neither in the config file nor given as a flag.
    #[error("missing setting {field} (set it in the config file or as --{flag})", flag = .field.replace('_', "-"))]
    Missing { field: &'static str },
    /// A setting has a value the daemon cannot use.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid { field: &'static str, value: String, reason: String },
}

/// Reads a TOML config file into `T` (whose serde attributes refuse unknown settings).
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
}

/// A daemon's settings: every field an `Option`, read from a TOML file and from flags, then validated.
///
/// Implemented by [`settings!`](crate::settings), which keeps the field list in one place.
pub trait Settings: DeserializeOwned + Default {
    /// `self` with every unset field taken from `base`.
    fn or(self, base: Self) -> Self;
}

/// The settings of the config `file` (when given) with `flags` laid over them: a flag wins over the file.
pub fn merge_settings<S: Settings>(file: Option<&Path>, flags: S) -> Result<S, ConfigError> {
    let base = match file {
        Some(path) => read_config(path)?,
        None => S::default(),
    };
    Ok(flags.or(base))
}

/// Declares a daemon's settings struct and implements [`Settings`] for it.
///
/// Every field must be an `Option`; the struct's own attributes (clap, serde) are kept as written, so one
/// definition serves as flags, as the config file's schema and as the merge of both.
#[macro_export]
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$struct_meta])*
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: $ty,
            )*
        }

        impl $crate::process::Settings for $name {
            fn or(self, base: Self) -> Self {
                $name { $($field: self.$field.or(base.$field)),* }
            }
        }
    };
}

/// Logs go to stderr; `LBFLEET_LOG` sets the filter (else `default_filter`), `LBFLEET_LOG_FORMAT=json` the format.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LBFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("LBFLEET_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    crate::settings! {
        /// Settings of a test daemon.
        #[derive(Debug, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TestSettings {
            /// A name.
            name: Option<String>,
            /// A number.
            count: Option<u64>,
        }
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lbfleet-process-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write test config");
        path
    }

    #[test]
    fn flags_win_over_the_file_field_by_field() {
        let path = file("merge", "name = \"file\"\ncount = 3\n");
        let flags = TestSettings { name: Some("flag".into()), count: None };
        let merged = merge_settings(Some(&path), flags).expect("merged");
        assert_eq!(merged, TestSettings { name: Some("flag".into()), count: Some(3) });
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn without_a_file_the_flags_are_the_settings() {
        let flags = TestSettings { name: None, count: Some(1) };
        assert_eq!(merge_settings(None, flags).expect("merged"), TestSettings { name: None, count: Some(1) });
    }

    #[test]
    fn unknown_file_settings_and_missing_files_are_refused() {
        let path = file("unknown", "name = \"a\"\ncolour = \"red\"\n");
        let err = merge_settings(Some(&path), TestSettings::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let _ = std::fs::remove_file(&path);
        let err = merge_settings(Some(&path), TestSettings::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn a_missing_setting_names_its_flag() {
        let err = ConfigError::Missing { field: "host_id" };
        assert_eq!(err.to_string(), "missing setting host_id (set it in the config file or as --host-id)");
    }
}
