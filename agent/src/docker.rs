//! A thin bollard wrapper: the few Docker Engine calls the agent makes on its own host.
//!
//! The API version is negotiated with the engine at connect time, never assumed: the
//! engines these agents run next to may be old (API 1.41).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecOptions;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use bollard::query_parameters::EventsOptionsBuilder;
use bollard::query_parameters::InspectContainerOptions;
use bollard::query_parameters::KillContainerOptionsBuilder;
use bollard::query_parameters::RestartContainerOptions;
use bollard::query_parameters::StartContainerOptions;
use bollard::query_parameters::StopContainerOptions;
use bollard::Docker;
use bollard::API_DEFAULT_VERSION;
use futures::Stream;
use futures::StreamExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tracing::debug;

/// Seconds bollard waits for the engine's response headers (not for streamed bodies).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Errors of the Docker driver.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine could not be reached (socket missing, connection refused, timeout).
    #[error("Docker engine at {socket} is unreachable: {source}")]
    Unreachable {
        socket: String,
        #[source]
        source: BollardError,
    },
    /// The container does not exist.
    #[error("container {container} not found")]
    NotFound { container: String },
    /// The engine answered a call with an error.
    #[error("Docker {op} on {container} failed: {source}")]
    Api {
        op: &'static str,
        container: String,
        #[source]
        source: BollardError,
    },
    /// A command run with `docker exec` exited non-zero.
    #[error("`{command}` in {container} exited with {exit_code}: {stderr}")]
    ExecFailed { container: String, command: String, exit_code: i64, stderr: String },
    /// The engine started an exec detached although its output was asked for.
    #[error("the engine started `{command}` in {container} detached, without its output")]
    ExecDetached { container: String, command: String },
}

/// A connection to the local Docker engine.
#[derive(Clone, Debug)]
pub struct DockerHost {
    docker: Docker,
    socket: String,
}

/// What `inspect` reports about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Whether the container's main process runs.
    pub running: bool,
    /// RFC 3339 start time as the engine reports it; changes on every (re)start.
    pub started_at: String,
    /// IP address per attached network name (empty addresses left out).
    pub ip_addresses: BTreeMap<String, String>,
}

/// The result of a command run with `docker exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, -1 when the engine did not report one.
    pub exit_code: i64,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Returns `self` when the command exited 0, else `DockerError::ExecFailed`.
    pub fn success(self, container: &str, cmd: &[&str]) -> Result<ExecOutput, DockerError> {
        if self.exit_code == 0 {
            return Ok(self);
        }
        Err(DockerError::ExecFailed {
            container: container.to_owned(),
            command: cmd.join(" "),
            exit_code: self.exit_code,
            stderr: String::from_utf8_lossy(&self.stderr).trim().to_owned(),
        })
    }
}

/// Output chunks of an attached exec.
pub type ExecOutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// A running `docker exec` whose stdin and output are streamed by the caller.
pub struct AttachedExec {
    /// Exec id, for `exec_exit_code`.
    pub id: String,
    /// Multiplexed stdout/stderr chunks.
    pub output: ExecOutputStream,
    /// The command's stdin; shut it down to send EOF.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// What happened to a watched container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEventKind {
    /// The container started (also after a restart).
    Start,
    /// The main process exited.
    Die,
    /// `docker restart` finished (after its die and start events).
    Restart,
}

/// One lifecycle event of a watched container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// What happened.
    pub kind: ContainerEventKind,
    /// Container id the event is about.
    pub container_id: String,
}

impl DockerHost {
    /// Connects to the engine at `socket` (default: `DOCKER_HOST` or `/var/run/docker.sock`) and negotiates the API version.
    pub async fn connect(socket: Option<&Path>) -> Result<DockerHost, DockerError> {
        let (docker, label) = match socket {
            Some(path) => {
                let label = path.display().to_string();
                let docker = Docker::connect_with_unix(&label, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|source| DockerError::Unreachable { socket: label.clone(), source })?;
                (docker, label)
            }
            None => {
                let label = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "/var/run/docker.sock".to_owned());
                let docker = Docker::connect_with_local_defaults()
                    .map_err(|source| DockerError::Unreachable { socket: label.clone(), source })?;
                (docker, label)
            }
        };
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Unreachable { socket: label.clone(), source })?;
        let version = docker.client_version();
        debug!(socket = %label, api.version = %version, "connected to Docker");
        Ok(DockerHost { docker, socket: label })
    }

    /// The API version agreed with the engine, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Checks that the engine answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker.ping().await.map(drop).map_err(|source| self.unreachable(source))
    }

    /// State, restart count and addresses of `container`.
    pub async fn inspect(&self, container: &str) -> Result<ContainerInfo, DockerError> {
        let info = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.api_error("inspect", container, e))?;
        let state = info.state.unwrap_or_default();
        let ip_addresses = info
            .network_settings
            .and_then(|settings| settings.networks)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(network, endpoint)| endpoint.ip_address.filter(|ip| !ip.is_empty()).map(|ip| (network, ip)))
            .collect();
        Ok(ContainerInfo {
            id: info.id.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            started_at: state.started_at.unwrap_or_default(),
            ip_addresses,
        })
    }

    /// Runs `cmd` in `container`, feeding `stdin` when given, and collects its output and exit code.
    pub async fn exec(&self, container: &str, cmd: &[&str], stdin: Option<Vec<u8>>) -> Result<ExecOutput, DockerError> {
        let mut exec = self.exec_attached(container, cmd, stdin.is_some()).await?;
        let write_stdin = async {
            if let Some(data) = stdin {
                exec.input.write_all(&data).await?;
            }
            // EOF on stdin; the command may be waiting for it.
            exec.input.shutdown().await
        };
        let read_output = async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            while let Some(chunk) = exec.output.next().await {
                match chunk.map_err(|e| self.api_error("exec output", container, e))? {
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        stdout.extend_from_slice(&message)
                    }
                    LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                    LogOutput::StdIn { .. } => {}
                }
            }
            Ok::<_, DockerError>((stdout, stderr))
        };
        let (written, read) = tokio::join!(write_stdin, read_output);
        let (stdout, stderr) = read?;
        if let Err(source) = written {
            // A command that exits without reading all of its stdin breaks the pipe; its exit code says more.
            debug!(%source, container, "exec stdin closed early");
        }
        let exit_code = self.exec_exit_code(container, &exec.id).await?;
        Ok(ExecOutput { exit_code, stdout, stderr })
    }

    /// Starts `cmd` in `container` with stdout/stderr (and stdin when `with_stdin`) attached for streaming.
    pub async fn exec_attached(
        &self,
        container: &str,
        cmd: &[&str],
        with_stdin: bool,
    ) -> Result<AttachedExec, DockerError> {
        let options = ExecConfig {
            attach_stdin: Some(with_stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(cmd.iter().map(|word| (*word).to_owned()).collect()),
            ..Default::default()
        };
        let created =
            self.docker.create_exec(container, options).await.map_err(|e| self.api_error("exec", container, e))?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
            .await
            .map_err(|e| self.api_error("exec start", container, e))?;
        match started {
            StartExecResults::Attached { output, input } => Ok(AttachedExec { id: created.id, output, input }),
            StartExecResults::Detached => {
                Err(DockerError::ExecDetached { container: container.to_owned(), command: cmd.join(" ") })
            }
        }
    }

    /// Exit code of a finished exec, -1 when the engine reports none.
    async fn exec_exit_code(&self, container: &str, exec_id: &str) -> Result<i64, DockerError> {
        let inspected =
            self.docker.inspect_exec(exec_id).await.map_err(|e| self.api_error("exec inspect", container, e))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    /// Sends `signal` (e.g. `SIGUSR2`) to the container's main process.
    pub async fn signal(&self, container: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        self.docker.kill_container(container, Some(options)).await.map_err(|e| self.api_error("kill", container, e))
    }

    /// Restarts the container (stop with the image's stop signal, then start).
    pub async fn restart(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .restart_container(container, None::<RestartContainerOptions>)
            .await
            .map_err(|e| self.api_error("restart", container, e))
    }

    /// Stops the container; a stopped container is fine.
    pub async fn stop(&self, container: &str) -> Result<(), DockerError> {
        match self.docker.stop_container(container, None::<StopContainerOptions>).await {
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(self.api_error("stop", container, e)),
        }
    }

    /// Starts the container; a running container is fine.
    pub async fn start(&self, container: &str) -> Result<(), DockerError> {
        match self.docker.start_container(container, None::<StartContainerOptions>).await {
            Ok(()) | Err(BollardError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(self.api_error("start", container, e)),
        }
    }

    /// Start, die and restart events of `container` from now on; the stream ends after an error.
    pub fn events(&self, container: &str) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("container", vec![container]),
            ("event", vec!["start", "die", "restart"]),
        ]);
        // The request starts on the first poll; `since` keeps events from between now and then.
        let mut options = EventsOptionsBuilder::new().filters(&filters);
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            options = options.since(&format!("{}.{:09}", now.as_secs(), now.subsec_nanos()));
        }
        let options = options.build();
        let host = self.clone();
        let container = container.to_owned();
        let mut failed = false;
        self.docker.events(Some(options)).filter_map(move |item| {
            let out = if failed {
                None
            } else {
                match item {
                    Ok(message) => container_event(message).map(Ok),
                    Err(e) => {
                        failed = true;
                        Some(Err(host.api_error("events", &container, e)))
                    }
                }
            };
            std::future::ready(out)
        })
    }

    fn unreachable(&self, source: BollardError) -> DockerError {
        DockerError::Unreachable { socket: self.socket.clone(), source }
    }

    /// The error for a failed call about `container`: not found, unreachable engine, or the call's own failure.
    pub(crate) fn api_error(&self, op: &'static str, container: &str, source: BollardError) -> DockerError {
        match source {
            BollardError::DockerResponseServerError { status_code: 404, .. } => {
                DockerError::NotFound { container: container.to_owned() }
            }
            BollardError::IOError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::SocketNotFoundError(_) => self.unreachable(source),
            source => DockerError::Api { op, container: container.to_owned(), source },
        }
    }
}

fn container_event(message: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let actor = message.actor.unwrap_or_default();
    let kind = match message.action.as_deref()? {
        "start" => ContainerEventKind::Start,
        "restart" => ContainerEventKind::Restart,
        "die" => ContainerEventKind::Die,
        _ => return None,
    };
    Some(ContainerEvent { kind, container_id: actor.id.unwrap_or_default() })
}
