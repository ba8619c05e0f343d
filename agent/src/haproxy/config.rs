//! `haproxy.cfg`: rendering from `templates/haproxy.cfg`, validation with `haproxy -c`,
//! swapping it in and reloading.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use askama::Template;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tracing::debug;
use tracing::info;
use tracing::warn;

use super::map_file::rename_synced;
use super::map_file::replace_file;
use super::map_file::write_synced;
use super::Haproxy;
use super::HaproxyError;
use super::ReloadMode;
use super::CONFIG_PATH_IN_CONTAINER;
use super::READY_TIMEOUT;
use crate::desired::Backend;
use crate::desired::Topology;
use crate::docker::DockerError;

/// Pause between readiness probes after a reload.
const READY_POLL: Duration = Duration::from_millis(50);
/// Bound on one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Template)]
#[template(path = "haproxy.cfg", escape = "none")]
struct ConfigTemplate<'a> {
    map_path: &'a str,
    backends: &'a [Backend],
}

/// Whether `value` is one HAProxy config word made of `allowed` characters.
fn check_name(what: &'static str, value: &str, allowed: fn(u8) -> bool) -> Result<(), HaproxyError> {
    if value.is_empty() || !value.bytes().all(allowed) {
        return Err(HaproxyError::InvalidName { what, value: value.to_owned() });
    }
    Ok(())
}

fn identifier_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

fn address_byte(b: u8) -> bool {
    identifier_byte(b) || matches!(b, b'[' | b']')
}

fn path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')
}

impl Haproxy {
    /// Renders `haproxy.cfg` for `topology`; refuses names that are not single config words.
    pub fn render_config(topology: &Topology) -> Result<String, HaproxyError> {
        check_name("map path", &topology.map_path, path_byte)?;
        for backend in &topology.backends {
            check_name("backend name", &backend.name, identifier_byte)?;
            for server in &backend.servers {
                check_name("server name", &server.name, identifier_byte)?;
                check_name("server address", &server.address, address_byte)?;
            }
        }
        let mut rendered = ConfigTemplate { map_path: &topology.map_path, backends: &topology.backends }.render()?;
        // haproxy -c refuses a last line without LF, which the template leaves when there is no backend.
        if !rendered.ends_with('\n') {
            rendered.push('\n');
        }
        Ok(rendered)
    }

    /// Renders, validates (`haproxy -c`), saves the server state, swaps in and reloads the config
    /// when it differs from the file in service; returns whether it reloaded.
    ///
    /// A reload rereads the map file and drops runtime-only entries: write the map file first.
    pub async fn apply_config(&self, topology: &Topology) -> Result<bool, HaproxyError> {
        let rendered = Haproxy::render_config(topology)?;
        if self.read_config().await?.as_deref() == Some(rendered.as_str()) {
            return Ok(false);
        }
        self.install_and_reload(topology, rendered).await?;
        Ok(true)
    }

    /// Renders, validates, saves the server state, swaps in and reloads the config for
    /// `topology`, even when the file already holds it (the process may run an older one).
    pub async fn put_config_in_service(&self, topology: &Topology) -> Result<(), HaproxyError> {
        let rendered = Haproxy::render_config(topology)?;
        self.install_and_reload(topology, rendered).await
    }

    async fn install_and_reload(&self, topology: &Topology, rendered: String) -> Result<(), HaproxyError> {
        let started = Instant::now();
        let docker = self.docker("validating haproxy.cfg with haproxy -c")?;
        let container = self.target.container.as_str();
        let candidate = format!("{CONFIG_PATH_IN_CONTAINER}.candidate");

        match self.config_file() {
            Some(path) => {
                let host_candidate = path.with_file_name("haproxy.cfg.candidate");
                let bytes = rendered.clone().into_bytes();
                blocking(&path, move || write_synced(&host_candidate, &bytes)).await?;
            }
            None => {
                let cmd = ["sh", "-c", r#"cat > "$1""#, "sh", candidate.as_str()];
                docker.exec(container, &cmd, Some(rendered.clone().into_bytes())).await?.success(container, &cmd)?;
            }
        }

        let check = ["haproxy", "-c", "-f", candidate.as_str()];
        let checked = docker.exec(container, &check, None).await?;
        if checked.exit_code != 0 {
            self.remove_candidate(&candidate).await;
            let mut output = String::from_utf8_lossy(&checked.stderr).trim().to_owned();
            let stdout = String::from_utf8_lossy(&checked.stdout);
            if !stdout.trim().is_empty() {
                output = format!("{output}\n{}", stdout.trim());
            }
            warn!(container, %output, "rendered haproxy.cfg refused by haproxy -c");
            return Err(HaproxyError::InvalidConfig { output });
        }

        // Saved after `haproxy -c`, as late as possible before the reload: health checks may change it meanwhile.
        let _ = self.save_server_state(topology).await;
        match self.config_file() {
            Some(path) => {
                let host_candidate = path.with_file_name("haproxy.cfg.candidate");
                blocking(&path.clone(), move || rename_synced(&host_candidate, &path)).await?;
            }
            None => {
                let cmd =
                    ["sh", "-c", r#"mv -f "$1" "$2" && sync "${2%/*}""#, "sh", &candidate, CONFIG_PATH_IN_CONTAINER];
                docker.exec(container, &cmd, None).await?.success(container, &cmd)?;
            }
        }
        self.reload().await?;
        info!(
            container,
            backends = topology.backends.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "haproxy.cfg replaced and reloaded"
        );
        Ok(())
    }

    /// Puts the current `haproxy.cfg` into service (ReloadMode) and waits until the admin socket answers again.
    pub async fn reload(&self) -> Result<(), HaproxyError> {
        let container = self.target.container.as_str();
        match self.target.reload {
            ReloadMode::Hitless => {
                // A HAProxy still starting refuses its master socket and ignores SIGUSR2: wait for its
                // first worker, then reload anyway (it may have read the file before we replaced it).
                let before = match self.worker_pid().await {
                    Ok(pid) => Some(pid),
                    Err(_) => {
                        self.wait_ready(None).await?;
                        self.worker_pid().await.ok()
                    }
                };
                let by_master = match self.master_socket().filter(|path| path.exists()) {
                    Some(path) => match master_reload(&path, READY_TIMEOUT).await {
                        Err(HaproxyError::Socket { source, .. }) if self.docker.is_some() => {
                            warn!(%source, container, "master socket unusable, reloading with SIGUSR2");
                            false
                        }
                        result => result.map(|()| true)?,
                    },
                    None => false,
                };
                if !by_master {
                    self.docker("reloading with SIGUSR2")?.signal(container, "SIGUSR2").await?;
                }
                debug!(container, by_master, "reload requested");
                self.wait_ready(before).await
            }
            ReloadMode::Restart => {
                let docker = self.docker("restarting HAProxy")?;
                docker.stop(container).await?;
                docker.start(container).await?;
                self.wait_ready(None).await
            }
        }
    }

    /// Whether the container exists and is stopped: HAProxy exited (a config it refuses, a crash)
    /// or was stopped. Without Docker, or when the container is gone, there is nothing to start.
    pub async fn is_stopped(&self) -> Result<bool, HaproxyError> {
        let Some(docker) = self.docker.as_ref() else {
            return Ok(false);
        };
        match docker.inspect(&self.target.container).await {
            Ok(info) => Ok(!info.running),
            Err(DockerError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Starts the stopped container with the config rendered for `topology` put back first: the
    /// file it stopped on (edited by hand, say) would stop it again. No `haproxy -c` here, as it
    /// needs the container running. Without a shared config directory it starts with the file it has.
    pub async fn start_stopped(&self, topology: &Topology) -> Result<(), HaproxyError> {
        let docker = self.docker("starting HAProxy")?;
        let container = self.target.container.as_str();
        let rendered = Haproxy::render_config(topology)?;
        match self.config_file() {
            Some(path) if self.read_config().await?.as_deref() != Some(rendered.as_str()) => {
                let bytes = rendered.into_bytes();
                let target = path.clone();
                blocking(&path, move || replace_file(&target, &bytes)).await?;
                info!(container, "haproxy.cfg put back while HAProxy was stopped");
            }
            Some(_) => {}
            None => warn!(container, "no shared config directory: HAProxy starts with the config it has"),
        }
        self.refilter_server_state(topology).await;
        docker.start(container).await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, self.worker_pid()).await {
                return Ok(());
            }
            if !docker.inspect(container).await?.running {
                return Err(HaproxyError::Exited { container: container.to_owned() });
            }
            if Instant::now() >= deadline {
                return Err(HaproxyError::Timeout { op: "waiting for HAProxy to start", after: READY_TIMEOUT });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The config file in the container (shared directory, else `docker exec cat`); `None` when missing.
    pub async fn read_config(&self) -> Result<Option<String>, HaproxyError> {
        if let Some(path) = self.config_file() {
            return match tokio::fs::read_to_string(&path).await {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(HaproxyError::File { op: "read", path, source }),
            };
        }
        let docker = self.docker("reading haproxy.cfg from the container")?;
        let out = docker.exec(&self.target.container, &["cat", CONFIG_PATH_IN_CONTAINER], None).await?;
        Ok((out.exit_code == 0).then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    async fn remove_candidate(&self, candidate: &str) {
        let host_candidate = self.config_file().map(|path| path.with_file_name("haproxy.cfg.candidate"));
        self.remove_file(host_candidate, candidate, "config candidate").await;
    }

    /// Removes a file of the container, best effort: through the shared directory when there is
    /// one (`host_path`), else with `rm -f` in the container. A file already gone is fine.
    pub(super) async fn remove_file(&self, host_path: Option<PathBuf>, in_container: &str, what: &'static str) {
        let result = match host_path {
            Some(path) => match std::fs::remove_file(&path) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    Err(HaproxyError::File { op: "remove", path, source })
                }
                _ => Ok(()),
            },
            None => match self.docker("removing a file in the container") {
                Ok(docker) => docker
                    .exec(&self.target.container, &["rm", "-f", in_container], None)
                    .await
                    .map(drop)
                    .map_err(Into::into),
                Err(e) => Err(e),
            },
        };
        if let Err(error) = result {
            warn!(%error, container = %self.target.container, "{what} not removed");
        }
    }

    /// PID of the worker answering the admin socket (`show info`); a reload changes it.
    pub async fn worker_pid(&self) -> Result<u32, HaproxyError> {
        let info = self.run_command(&[("verb", "show"), ("verb", "info")]).await?;
        info.lines()
            .find_map(|line| line.strip_prefix("Pid:"))
            .and_then(|pid| pid.trim().parse().ok())
            .ok_or_else(|| HaproxyError::Command { command: "show info".to_owned(), message: info.trim().to_owned() })
    }

    /// Waits until a worker other than `before` answers the admin socket.
    async fn wait_ready(&self, before: Option<u32>) -> Result<(), HaproxyError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let probe = tokio::time::timeout(PROBE_TIMEOUT, self.worker_pid()).await;
            match probe {
                Ok(Ok(pid)) if Some(pid) != before => return Ok(()),
                Ok(Ok(_)) => debug!(container = %self.target.container, "old worker still answers"),
                Ok(Err(error)) => debug!(%error, container = %self.target.container, "HAProxy not answering yet"),
                Err(_) => debug!(container = %self.target.container, "readiness probe timed out"),
            }
            if Instant::now() >= deadline {
                return Err(HaproxyError::Timeout { op: "waiting for HAProxy after the reload", after: READY_TIMEOUT });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

/// Master CLI `reload`; HAProxy 3.0 answers `Success=1` once the new worker is up (`Success=0` and the startup log when not).
async fn master_reload(path: &Path, timeout: Duration) -> Result<(), HaproxyError> {
    let exchange = async {
        let socket_error = |source| HaproxyError::Socket { path: path.to_owned(), source };
        let mut stream = UnixStream::connect(path).await.map_err(socket_error)?;
        stream.write_all(b"reload\n").await.map_err(socket_error)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(|source| HaproxyError::SocketIo { source })?;
        Ok::<_, HaproxyError>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HaproxyError::Timeout { op: "master CLI reload", after: timeout })??;
    match answer.lines().next().map(str::trim) {
        Some("Success=1") => Ok(()),
        _ => Err(HaproxyError::Reload { message: answer.trim().to_owned() }),
    }
}

/// Runs file I/O on the blocking pool; `path` names the file if the task itself fails.
pub(crate) async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, HaproxyError> + Send + 'static,
) -> Result<T, HaproxyError> {
    tokio::task::spawn_blocking(f).await.map_err(|source| HaproxyError::FileTask { path: path.to_owned(), source })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::AdminState;
    use crate::desired::Server;

    fn topology(backends: Vec<Backend>) -> Topology {
        Topology { map_path: "/var/lib/haproxy/maps/fqdn-to-shard.map".into(), backends }
    }

    #[test]
    fn renders_one_backend_per_shard() {
        let cfg = Haproxy::render_config(&topology(vec![
            Backend {
                name: "shard-web-1".into(),
                servers: vec![
                    Server {
                        name: "web-1-node-0".into(),
                        address: "node-0:80".into(),
                        id: 3,
                        admin: AdminState::Maint,
                    },
                    Server {
                        name: "web-1-node-1".into(),
                        address: "10.0.0.7:8080".into(),
                        id: 0,
                        admin: AdminState::Ready,
                    },
                ],
            },
            Backend { name: "shard-empty".into(), servers: vec![] },
        ]))
        .expect("rendered");
        assert!(cfg.contains(
            "\nbackend shard-web-1\n    balance hash req.hdr(host),host_only,lower\n    hash-type consistent\n    \
             server web-1-node-0 node-0:80 id 3 check\n    server web-1-node-1 10.0.0.7:8080 check\n"
        ));
        assert!(cfg.contains(
            "\nbackend shard-empty\n    balance hash req.hdr(host),host_only,lower\n    hash-type consistent\n"
        ));
        assert!(cfg.contains("map(/var/lib/haproxy/maps/fqdn-to-shard.map)"));
        assert!(cfg.contains("stats socket /var/run/haproxy/admin.sock mode 660 level admin expose-fd listeners"));
        assert!(cfg.contains("default_backend no-such-site"));
        // Admin states never reach the config: changing one must not reload.
        assert!(!cfg.contains(" disabled"), "{cfg}");
        assert!(cfg.contains("\n    server-state-file /usr/local/etc/haproxy/server-state\n"));
        assert!(cfg.contains("\n    load-server-state-from-file global\n"));
        assert!(cfg.contains("\n    option idle-close-on-response\n"));
        assert!(cfg.ends_with('\n') && !cfg.ends_with("\n\n\n"), "tidy end: {cfg:?}");
    }

    #[test]
    fn renders_without_backends() {
        let cfg = Haproxy::render_config(&topology(vec![])).expect("rendered");
        assert!(cfg.contains("backend no-such-site"));
        assert!(!cfg.contains("balance"));
        assert!(cfg.ends_with("\n"), "haproxy -c refuses a last line without LF: {cfg:?}");
    }

    #[test]
    fn refuses_names_that_would_inject_config() {
        let evil = |name: &str, address: &str| {
            topology(vec![Backend {
                name: name.into(),
                servers: vec![Server { name: "n".into(), address: address.into(), id: 1, admin: AdminState::Ready }],
            }])
        };
        assert!(Haproxy::render_config(&evil("shard-x\n    bind :9999", "a:80")).is_err());
        assert!(Haproxy::render_config(&evil("shard-x", "a:80 backup")).is_err());
        assert!(Haproxy::render_config(&evil("", "a:80")).is_err());
        assert!(Haproxy::render_config(&evil("shard-x", "[::1]:80")).is_ok());
        let mut bad_map = topology(vec![]);
        bad_map.map_path = "/x.map) if TRUE".into();
        assert!(Haproxy::render_config(&bad_map).is_err());
    }
}
