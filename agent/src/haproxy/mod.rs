//! The HAProxy driver: map file, runtime API (admin socket or `docker exec socat`),
//! `haproxy.cfg` rendering, validation and hitless reload.

mod admin_socket;
mod config;
mod map_file;
mod runtime;
mod server_state;
mod state_file;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use admin_socket::AdminSession;
pub use map_file::MapFileWrite;
pub use runtime::AdminChange;
pub use runtime::RuntimeCommandError;
pub use runtime::RuntimeReport;
pub use server_state::parse_servers_state;
pub use server_state::state_file_for;
pub use server_state::ServerStateError;
pub use server_state::ServerStateLine;
pub use server_state::StateFile;
pub use stats::FrontendStat;
pub use stats::ServerStat;
pub use stats::ShowStatError;
use tracing::warn;

use crate::docker::DockerError;
use crate::docker::DockerHost;

/// The admin socket inside the container (the image's `stats socket`).
pub const ADMIN_SOCKET_IN_CONTAINER: &str = "/var/run/haproxy/admin.sock";
/// `haproxy.cfg` inside the container.
pub const CONFIG_PATH_IN_CONTAINER: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// File names in the shared socket directory.
const ADMIN_SOCKET: &str = "admin.sock";
const MASTER_SOCKET: &str = "master.sock";
const CONFIG_FILE: &str = "haproxy.cfg";
/// The server state file inside the container (the template's `server-state-file`).
pub const SERVER_STATE_PATH_IN_CONTAINER: &str = "/usr/local/etc/haproxy/server-state";
/// Its name in the shared config directory.
const SERVER_STATE_FILE: &str = "server-state";

/// Bound on one command with its payload: HAProxy's `tune.bufsize` is 16 KiB and
/// a command of 16,411 bytes was refused in tests, 16,295 accepted.
const PAYLOAD_LIMIT: usize = 15 * 1024;
/// Bound on one runtime API session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the wait for HAProxy to answer again after a reload.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the HAProxy driver.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// A key, value or name could smuggle a second command into the runtime API or the map file.
    #[error("refusing {what} {value:?}: whitespace, control characters, quotes and ;#\\ or << are not allowed")]
    UnsafeWord { what: &'static str, value: String },
    /// A topology name or address HAProxy's config could not take as a single word.
    #[error("invalid {what} {value:?} for haproxy.cfg: use letters, digits and . _ - : (addresses also [ ])")]
    InvalidName { what: &'static str, value: String },
    /// Runtime mode `socket` was asked for, but no socket directory is configured.
    #[error("the runtime API over the admin socket needs a socket directory (--socket-dir)")]
    NoSocketDir,
    /// The admin socket could not be reached.
    #[error("admin socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing an open admin session failed.
    #[error("admin session I/O: {source}")]
    SocketIo {
        #[source]
        source: std::io::Error,
    },
    /// HAProxy closed the session before answering every command.
    #[error("HAProxy closed the admin session after {answered} of {expected} answers: {message}")]
    SessionClosed { answered: usize, expected: usize, message: String },
    /// HAProxy refused a command.
    #[error("HAProxy refused `{command}`: {message}")]
    Command { command: String, message: String },
    /// The operation needs the Docker API, and the driver has none.
    #[error("{op} needs the Docker API, but no Docker host is configured")]
    NoDocker { op: &'static str },
    /// A Docker call failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// An operation took longer than allowed.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// A file on the host could not be written or read.
    #[error("{op} {path}: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking file task (write, rename, fsync) did not run to completion.
    #[error("file task for {path}: {source}")]
    FileTask {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    /// `show servers state` answered with something other than its dump.
    #[error("unexpected answer to `show servers state`: {source}")]
    ServersState {
        #[from]
        source: ServerStateError,
    },
    /// `show stat` answered with something other than its table.
    #[error("unexpected answer to `show stat`: {source}")]
    ShowStat {
        #[from]
        source: ShowStatError,
    },
    /// The askama template failed to render.
    #[error("rendering haproxy.cfg: {source}")]
    Render {
        #[from]
        source: askama::Error,
    },
    /// `haproxy -c` refused the rendered config; the running config is untouched.
    #[error("HAProxy refused the new config (the old one keeps running): {output}")]
    InvalidConfig { output: String },
    /// The reload itself failed.
    #[error("HAProxy reload failed: {message}")]
    Reload { message: String },
    /// The container stopped again right after the agent started it.
    #[error("HAProxy in {container} exited again right after it was started (see `docker logs {container}`)")]
    Exited { container: String },
}

/// How the runtime API is reached; named in lower case as a flag value and in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeMode {
    /// The admin socket shared through the bind-mounted socket directory.
    Socket,
    /// `docker exec <container> socat stdio UNIX-CONNECT:<admin socket>`.
    Exec,
    /// The socket when `<socket_dir>/admin.sock` exists, else exec.
    Auto,
}

/// How a new `haproxy.cfg` is put into service; named in lower case as a flag value and in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMode {
    /// Master CLI `reload` when the master socket is shared, else `docker kill -s USR2`; no connection drops.
    Hitless,
    /// `docker stop` + `docker start`, the old way, kept as a fallback.
    Restart,
}

/// The HAProxy container this agent drives and where its files are shared with the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyTarget {
    /// Container name or id.
    pub container: String,
    /// Host directory bind-mounted at `/var/run/haproxy` (admin and master sockets).
    pub socket_dir: Option<PathBuf>,
    /// Host directory bind-mounted at `/var/lib/haproxy/maps`.
    pub map_dir: Option<PathBuf>,
    /// Host directory bind-mounted at `/usr/local/etc/haproxy`.
    pub config_dir: Option<PathBuf>,
    /// The map file path inside the container; also the runtime API's map name.
    pub map_path: String,
    /// How config changes are put into service.
    pub reload: ReloadMode,
}

/// One runtime API change to the FQDN map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeChange {
    /// A key not in the map yet (`add map`).
    Add { fqdn: String, backend: String },
    /// A key that may exist (`set map`, then `add map` when HAProxy says it does not).
    Set { fqdn: String, backend: String },
    /// Remove every entry of a key (`del map`); a missing key is fine.
    Del { fqdn: String },
}

/// Drives one HAProxy container: map file, runtime API, config and reloads.
#[derive(Debug, Clone)]
pub struct Haproxy {
    target: HaproxyTarget,
    docker: Option<DockerHost>,
    mode: RuntimeMode,
}

impl Haproxy {
    /// A driver for `target`; `docker` is needed for the exec path, `haproxy -c` and reloads by signal or restart.
    pub fn new(target: HaproxyTarget, docker: Option<DockerHost>, mode: RuntimeMode) -> Haproxy {
        Haproxy { target, docker, mode }
    }

    /// The target this driver was built for.
    pub fn target(&self) -> &HaproxyTarget {
        &self.target
    }

    /// Which path the runtime API takes now (Socket or Exec), for reports.
    pub fn runtime_path(&self) -> RuntimeMode {
        match self.mode {
            RuntimeMode::Auto if self.admin_socket().is_some_and(|path| path.exists()) => RuntimeMode::Socket,
            RuntimeMode::Auto => RuntimeMode::Exec,
            mode => mode,
        }
    }

    fn admin_socket(&self) -> Option<PathBuf> {
        self.target.socket_dir.as_deref().map(|dir| dir.join(ADMIN_SOCKET))
    }

    fn master_socket(&self) -> Option<PathBuf> {
        self.target.socket_dir.as_deref().map(|dir| dir.join(MASTER_SOCKET))
    }

    fn config_file(&self) -> Option<PathBuf> {
        self.target.config_dir.as_deref().map(|dir| dir.join(CONFIG_FILE))
    }

    fn server_state_file(&self) -> Option<PathBuf> {
        self.target.config_dir.as_deref().map(|dir| dir.join(SERVER_STATE_FILE))
    }

    fn docker(&self, op: &'static str) -> Result<&DockerHost, HaproxyError> {
        self.docker.as_ref().ok_or(HaproxyError::NoDocker { op })
    }

    /// Opens an admin session on the path `runtime_path` picks; Auto falls back to exec when the socket refuses.
    async fn admin_session(&self) -> Result<AdminSession, HaproxyError> {
        match (self.runtime_path(), self.admin_socket()) {
            (RuntimeMode::Socket, Some(path)) => match AdminSession::connect(&path).await {
                Err(error) if self.mode == RuntimeMode::Auto && self.docker.is_some() => {
                    warn!(%error, container = %self.target.container, "admin socket unusable, using docker exec");
                    self.exec_admin_session().await
                }
                result => result,
            },
            (RuntimeMode::Socket, None) => Err(HaproxyError::NoSocketDir),
            _ => self.exec_admin_session().await,
        }
    }

    async fn exec_admin_session(&self) -> Result<AdminSession, HaproxyError> {
        let docker = self.docker("the runtime API over docker exec")?;
        AdminSession::exec(docker, &self.target.container, ADMIN_SOCKET_IN_CONTAINER).await
    }

    /// Runs `fut` under the session timeout.
    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, HaproxyError>>,
    ) -> Result<T, HaproxyError> {
        tokio::time::timeout(SESSION_TIMEOUT, fut)
            .await
            .unwrap_or(Err(HaproxyError::Timeout { op, after: SESSION_TIMEOUT }))
    }
}
