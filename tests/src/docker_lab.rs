//! Real containers for the Docker tests and the agent benchmark: a Docker network per lab,
//! HAProxy containers with their socket, map and config directories shared with the host,
//! nginx nodes, `lbfleet-agent` processes, and a whole fleet of them behind one coordinator.
//! Everything a lab starts is removed again when it is dropped, also after a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use lbfleet_agent::docker::DockerHost;
use lbfleet_agent::haproxy::Haproxy;
use lbfleet_agent::haproxy::HaproxyTarget;
use lbfleet_agent::haproxy::ReloadMode;
use lbfleet_agent::haproxy::RuntimeMode;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::compose_fleet::run;
use crate::compose_fleet::Ran;
use crate::poll::wait_for;
use crate::process::ClusterOptions;
use crate::process::ProcessCluster;

/// The HAProxy image `docker/build-images.sh` builds by default; the tests run `haproxy_image()`.
pub const HAPROXY_IMAGE: &str = "lbfleet/haproxy:dev";
/// The nginx node image `docker/build-images.sh` builds by default; the tests run `node_image()`.
pub const NODE_IMAGE: &str = "lbfleet/node:dev";

/// The HAProxy image `docker/build-images.sh` builds (tagged `LBFLEET_TAG`, default `dev`).
pub fn haproxy_image() -> String {
    format!("lbfleet/haproxy:{}", image_tag())
}

/// The nginx node image `docker/build-images.sh` builds (tagged `LBFLEET_TAG`, default `dev`).
pub fn node_image() -> String {
    format!("lbfleet/node:{}", image_tag())
}

/// `LBFLEET_TAG`, as `docker/build-images.sh` reads it: images of another tree can sit next to these.
fn image_tag() -> String {
    std::env::var("LBFLEET_TAG").unwrap_or_else(|_| "dev".into())
}

/// The FQDN map inside the HAProxy container; also its name in the runtime API.
pub const MAP_PATH: &str = "/var/lib/haproxy/maps/fqdn-to-shard.map";
/// How long a container or an agent gets to come up.
pub const READY: Duration = Duration::from_secs(30);

/// Whether Docker and the images are here. Without them this panics when `CI` is set, and
/// otherwise says why the test did nothing: Docker tests never pass by skipping in CI.
pub fn docker_available() -> bool {
    let probe = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &haproxy_image(), &node_image()])
        .output();
    tool_answers(probe, "docker", "Docker or the lbfleet images", "build them with docker/build-images.sh")
}

/// Whether `wrk` is installed; like `docker_available`, this panics when it is not and `CI` is set.
pub fn wrk_available() -> bool {
    // `wrk --version` exits 1 even when it prints its version, so ask the shell whether it is there.
    let probe =
        Command::new("sh").args(["-c", "command -v wrk || { echo 'wrk is not on PATH' >&2; exit 1; }"]).output();
    tool_answers(probe, "wrk", "wrk", "install it: apt-get install wrk (tests/run.sh does it as root)")
}

/// Whether a probe of a tool the Docker tests need succeeded. When it did not, this panics if `CI`
/// is set (those tests never pass by skipping in CI) and otherwise says why the test did nothing.
pub fn tool_answers(probe: std::io::Result<std::process::Output>, tool: &str, what: &str, hint: &str) -> bool {
    let problem = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("cannot run {tool}: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{what} unavailable and CI is set ({problem}); {hint}");
    }
    eprintln!("note: test not run, {what} unavailable: {problem} ({hint})");
    false
}

/// Runs the docker CLI and returns its trimmed stdout.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker")?;
    if !out.status.success() {
        bail!("docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Which host directories an HAProxy container gets.
#[derive(Debug, Clone, Copy)]
pub struct Mounts {
    /// `/var/run/haproxy` (admin and master sockets).
    pub sockets: bool,
    /// `/var/lib/haproxy/maps`.
    pub maps: bool,
    /// `/usr/local/etc/haproxy`.
    pub config: bool,
}

impl Mounts {
    /// Every directory shared, as the agent's normal path expects.
    pub const ALL: Mounts = Mounts { sockets: true, maps: true, config: true };
    /// Nothing shared: the agent must go through `docker exec`.
    pub const NONE: Mounts = Mounts { sockets: false, maps: false, config: false };
}

/// One HAProxy container of a lab.
#[derive(Debug, Clone)]
pub struct HaproxyBox {
    /// Container name, unique per lab.
    pub container: String,
    /// Host directory for the sockets; exists even when not mounted (then it stays empty).
    pub socket_dir: PathBuf,
    /// Host directory for the map file.
    pub map_dir: PathBuf,
    /// Host directory for `haproxy.cfg`.
    pub config_dir: PathBuf,
    /// Which of the directories the container sees.
    pub mounts: Mounts,
}

impl HaproxyBox {
    /// `127.0.0.1:<port>` published for the container's :80; Docker picks a new port on every start.
    pub fn http(&self) -> anyhow::Result<SocketAddr> {
        let port = docker(&["port", &self.container, "80/tcp"])?;
        port.lines().find_map(|line| line.parse().ok()).with_context(|| format!("no published port in {port:?}"))
    }

    /// The agent's HAProxy driver for this container, given the directories it mounts, once its
    /// runtime API answers. The socket directory is always given: when it is not mounted it stays
    /// empty, and `RuntimeMode::Auto` must then pick exec.
    pub async fn driver(&self, mode: RuntimeMode, reload: ReloadMode) -> anyhow::Result<Haproxy> {
        let docker = DockerHost::connect(None).await?;
        let target = HaproxyTarget {
            container: self.container.clone(),
            socket_dir: Some(self.socket_dir.clone()),
            map_dir: self.mounts.maps.then(|| self.map_dir.clone()),
            config_dir: self.mounts.config.then(|| self.config_dir.clone()),
            map_path: MAP_PATH.to_owned(),
            reload,
        };
        let haproxy = Haproxy::new(target, Some(docker), mode);
        wait_for("HAProxy's runtime API", READY, || async { haproxy.show_map().await.ok() }).await?;
        Ok(haproxy)
    }

    /// The admin socket as seen from the host.
    pub fn admin_socket(&self) -> PathBuf {
        self.socket_dir.join("admin.sock")
    }

    /// Sends one command to the admin socket shared with the host and returns HAProxy's answer.
    pub async fn admin(&self, command: &str) -> anyhow::Result<String> {
        admin_command(&self.admin_socket(), command).await
    }

    /// Waits until the worker answers the admin socket and the master its CLI: a reload signalled
    /// while HAProxy still starts up is lost (PID 1 ignores signals it has no handler for yet).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let master = self.socket_dir.join("master.sock");
        wait_for(&format!("{} to start", self.container), READY, || async {
            let info = self.admin("show info").await.ok()?;
            let procs = admin_command(&master, "show proc").await.ok()?;
            let worker = procs.lines().any(|line| line.split_whitespace().nth(1) == Some("worker"));
            (info.contains("Pid:") && worker).then_some(())
        })
        .await
    }

    /// Whether HAProxy's runtime map holds `fqdn` (`get map`, one connection).
    pub async fn holds(&self, fqdn: &str) -> anyhow::Result<bool> {
        let answer = self.admin(&format!("get map {MAP_PATH} {fqdn}")).await?;
        Ok(answer.contains("found=yes"))
    }

    /// The number of entries in HAProxy's runtime map (`show map`).
    pub async fn map_len(&self) -> anyhow::Result<usize> {
        let answer = self.admin(&format!("show map {MAP_PATH}")).await?;
        Ok(answer.lines().filter(|line| !line.trim().is_empty()).count())
    }

    /// HAProxy's runtime map (`show map`): FQDN → backend.
    pub async fn map(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let answer = self.admin(&format!("show map {MAP_PATH}")).await?;
        parse_show_map(&answer)
    }

    /// Every backend server as this HAProxy's current worker sees it (`show stat`).
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerStat>> {
        parse_show_stat(&self.admin("show stat").await?)
    }

    /// The server `server` of `backend`, if HAProxy has it.
    pub async fn server(&self, backend: &str, server: &str) -> anyhow::Result<Option<ServerStat>> {
        Ok(self.servers().await?.into_iter().find(|s| s.backend == backend && s.server == server))
    }

    /// The PID of the current worker, from the master CLI (`show proc`); a reload starts a new one.
    pub async fn worker_pid(&self) -> anyhow::Result<u32> {
        let procs = admin_command(&self.socket_dir.join("master.sock"), "show proc").await?;
        current_worker(&procs).with_context(|| format!("no current worker in `show proc`: {procs:?}"))
    }

    /// The PID of the worker that answers the admin socket (`show info`).
    pub async fn answering_pid(&self) -> anyhow::Result<u32> {
        let info = self.admin("show info").await?;
        info.lines()
            .find_map(|line| line.strip_prefix("Pid: ")?.trim().parse().ok())
            .with_context(|| format!("no Pid in `show info`: {info:?}"))
    }
}

/// Waits until a `GET /` for `fqdn` through `lb` is answered 200 by a node of `shard`; returns
/// that node (`X-Served-By`). Only a failed or wrong answer is retried, never a node that answered.
pub async fn node_serving(lb: &HaproxyBox, fqdn: &str, shard: &str) -> anyhow::Result<String> {
    let last = Mutex::new(String::from("no answer yet"));
    let found =
        wait_for(&format!("{fqdn} to be served from shard {shard} through {}", lb.container), READY, || async {
            let answer = match http_get(lb.http().ok()?, fqdn).await {
                Ok(answer) => answer,
                Err(error) => {
                    *last.lock().expect("lock") = error.to_string();
                    return None;
                }
            };
            if answer.status != 200 || answer.header("x-shard") != Some(shard) {
                *last.lock().expect("lock") = format!("{answer:?}");
                return None;
            }
            answer.header("x-served-by").map(str::to_owned)
        })
        .await;
    found.with_context(|| format!("last answer: {}", last.lock().expect("lock")))
}

/// Waits until the servers of `backend` on `lb` satisfy `check` (`what` names it); returns them.
pub async fn wait_servers<F>(lb: &HaproxyBox, backend: &str, what: &str, check: F) -> anyhow::Result<Vec<ServerStat>>
where
    F: Fn(&[ServerStat]) -> bool,
{
    let seen = Mutex::new(Vec::new());
    let found = wait_for(&format!("{what} on {}", lb.container), READY, || async {
        let servers: Vec<ServerStat> = lb.servers().await.ok()?.into_iter().filter(|s| s.backend == backend).collect();
        let done = check(&servers);
        *seen.lock().expect("lock") = servers.clone();
        done.then_some(servers)
    })
    .await;
    found.with_context(|| format!("servers of {backend} last seen: {:?}", seen.lock().expect("lock")))
}

/// One backend server row of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// The backend (`pxname`), e.g. `shard-web-1`.
    pub backend: String,
    /// The server (`svname`), the node's name.
    pub server: String,
    /// `status`: `UP`, `DOWN`, `MAINT`, `DRAIN`, `UP 1/3`, `MAINT (resolution)`, ...
    pub status: String,
    /// `scur`: sessions on the server now.
    pub sessions: u64,
}

/// Parses `show stat` CSV into its server rows (FRONTEND and BACKEND rows left out). The columns
/// read here come before every free-text column, so a plain split on commas is enough.
pub fn parse_show_stat(answer: &str) -> anyhow::Result<Vec<ServerStat>> {
    let mut lines = answer.lines();
    let header = lines
        .next()
        .and_then(|line| line.strip_prefix("# "))
        .with_context(|| format!("`show stat` answered with no table: {answer:?}"))?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| columns.iter().position(|c| *c == name).with_context(|| format!("no {name} column"));
    let (pxname, svname, status, scur) = (column("pxname")?, column("svname")?, column("status")?, column("scur")?);
    let mut servers = Vec::new();
    for line in lines.filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or_default();
        if matches!(field(svname), "FRONTEND" | "BACKEND") {
            continue;
        }
        servers.push(ServerStat {
            backend: field(pxname).to_owned(),
            server: field(svname).to_owned(),
            status: field(status).to_owned(),
            sessions: field(scur).parse().unwrap_or(0),
        });
    }
    Ok(servers)
}

/// Parses `show map` (`<ref> <key> <value>` per line) into key → value.
pub fn parse_show_map(answer: &str) -> anyhow::Result<BTreeMap<String, String>> {
    answer
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [_, key, value] => Ok((key.to_string(), value.to_string())),
            _ => bail!("unexpected `show map` line {line:?}"),
        })
        .collect()
}

/// The PID of the current worker in the master CLI's `show proc`: the first `worker` row of the
/// `# workers` section (old workers still finishing their connections are listed after it).
fn current_worker(procs: &str) -> Option<u32> {
    let mut in_workers = false;
    for line in procs.lines() {
        if line.starts_with('#') {
            in_workers = line.trim() == "# workers";
            continue;
        }
        let mut fields = line.split_whitespace();
        if let (true, Some(pid), Some("worker")) = (in_workers, fields.next(), fields.next()) {
            return pid.parse().ok();
        }
    }
    None
}

/// Sends `command` over a fresh connection to an HAProxy admin or master socket (non-interactive
/// mode: HAProxy answers and closes) and returns the answer.
pub async fn admin_command(socket: &Path, command: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        // The master CLI answers only once our side is closed, as socat does it.
        stream.shutdown().await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{} did not answer `{command}` in time", socket.display()))?
        .with_context(|| format!("admin socket {}", socket.display()))
}

/// Containers and a network for one test; everything is removed on drop, also after a panic.
pub struct Lab {
    /// Prefix of every container name, and the network's name.
    pub prefix: String,
    /// The Docker network every container joins; containers reach each other by name.
    pub network: String,
    containers: Vec<String>,
    dirs: TempDir,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Creates the lab's network; `test` becomes part of every name.
    pub fn new(test: &str) -> anyhow::Result<Lab> {
        let prefix = format!("lbft-{test}-{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
        let dirs = tempfile::Builder::new().prefix("lbfleet-lab-").tempdir()?;
        docker(&["network", "create", &prefix])?;
        Ok(Lab { network: prefix.clone(), prefix, containers: Vec::new(), dirs })
    }

    /// A directory of the lab on the host for logs and files; removed with the lab.
    pub fn dir(&self) -> &Path {
        self.dirs.path()
    }

    /// Starts an HAProxy container with the chosen host directories mounted.
    pub fn start_haproxy(&mut self, name: &str, mounts: Mounts) -> anyhow::Result<HaproxyBox> {
        let container = format!("{}-{name}", self.prefix);
        let base = self.dirs.path().join(name);
        let (socket_dir, map_dir, config_dir) = (base.join("sockets"), base.join("maps"), base.join("config"));
        for dir in [&socket_dir, &map_dir, &config_dir] {
            std::fs::create_dir_all(dir)?;
        }
        let mut args: Vec<String> =
            ["run", "-d", "--name", &container, "--network", &self.network, "-p", "127.0.0.1::80"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        for (mounted, dir, target) in [
            (mounts.sockets, &socket_dir, "/var/run/haproxy"),
            (mounts.maps, &map_dir, "/var/lib/haproxy/maps"),
            (mounts.config, &config_dir, "/usr/local/etc/haproxy"),
        ] {
            if mounted {
                args.push("-v".into());
                args.push(format!("{}:{target}", dir.display()));
            }
        }
        args.push(haproxy_image());
        // Registered before it runs: a half-started container is removed too.
        self.containers.push(container.clone());
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(HaproxyBox { container, socket_dir, map_dir, config_dir, mounts })
    }

    /// Starts an nginx node answering with `X-Shard: <shard>` and `X-Served-By: <name>`; returns
    /// its container name, which is also its DNS name on the lab's network.
    pub fn start_node(&mut self, name: &str, shard: &str) -> anyhow::Result<String> {
        let container = format!("{}-{name}", self.prefix);
        self.containers.push(container.clone());
        let env = format!("SHARD={shard}");
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &self.network,
            "-e",
            &env,
            &node_image(),
        ])?;
        Ok(container)
    }
}

impl Lab {
    /// Stops `container` (nginx finishes what it has in flight first).
    pub fn stop(&self, container: &str) -> anyhow::Result<()> {
        docker(&["stop", "-t", "10", container]).map(drop)
    }

    /// The address of `container` on the lab's network.
    pub fn ip(&self, container: &str) -> anyhow::Result<String> {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.network);
        let ip = docker(&["inspect", "-f", &format, container])?;
        anyhow::ensure!(!ip.is_empty(), "{container} has no address on {}", self.network);
        Ok(ip)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(self.containers.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = docker(&["network", "rm", &self.network]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Settings of one `lbfleet-agent` process.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--reconcile-interval`, seconds.
    pub reconcile_interval: f64,
    /// `--report-interval`, seconds.
    pub report_interval: f64,
    /// `LBFLEET_LOG` for the agent.
    pub log_filter: String,
    /// `--reload-min-interval`, seconds; `None` leaves the agent's default.
    pub reload_min_interval: Option<f64>,
    /// `--metrics-listen 127.0.0.1:0`: the operator listener on a free port (`AgentProcess::ops_address`
    /// reads it from the log, so `log_filter` must let info through).
    pub metrics: bool,
    /// `--probe-interval`, seconds; `None` leaves the agent's default.
    pub probe_interval: Option<f64>,
    /// `--probe-sample`; `None` leaves the agent's default.
    pub probe_sample: Option<u32>,
}

impl Default for AgentOptions {
    fn default() -> AgentOptions {
        AgentOptions {
            reconcile_interval: 0.5,
            report_interval: 1.0,
            log_filter: "info".into(),
            reload_min_interval: None,
            metrics: false,
            probe_interval: None,
            probe_sample: None,
        }
    }
}

/// An `lbfleet-agent` process on the host, driving one HAProxy container; killed on drop.
pub struct AgentProcess {
    /// The host id it runs as.
    pub host_id: String,
    log_path: PathBuf,
    child: Option<Child>,
}

impl AgentProcess {
    /// Starts `binary` for `host_id` against `lb`'s shared directories, logging to `log_path`.
    pub fn start(
        binary: &Path,
        host_id: &str,
        endpoints: &[String],
        tls_dir: &Path,
        lb: &HaproxyBox,
        options: &AgentOptions,
        log_path: PathBuf,
    ) -> anyhow::Result<AgentProcess> {
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut command = Command::new(binary);
        if let Some(seconds) = options.reload_min_interval {
            command.args(["--reload-min-interval", &seconds.to_string()]);
        }
        if options.metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if let Some(seconds) = options.probe_interval {
            command.args(["--probe-interval", &seconds.to_string()]);
        }
        if let Some(sample) = options.probe_sample {
            command.args(["--probe-sample", &sample.to_string()]);
        }
        // The agent runs on the host: it reaches HAProxy's frontend at the port Docker published.
        if let Ok(frontend) = lb.http() {
            command.args(["--probe-address", &frontend.to_string()]);
        }
        let child = command
            .args(["--host-id", host_id, "--endpoints", &endpoints.join(",")])
            .arg("--tls-dir")
            .arg(tls_dir)
            .arg("--socket-dir")
            .arg(&lb.socket_dir)
            .arg("--map-dir")
            .arg(&lb.map_dir)
            .arg("--config-dir")
            .arg(&lb.config_dir)
            .args(["--reconcile-interval", &options.reconcile_interval.to_string()])
            .args(["--report-interval", &options.report_interval.to_string()])
            .env("LBFLEET_LOG", &options.log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(AgentProcess { host_id: host_id.to_owned(), log_path, child: Some(child) })
    }

    /// Everything the agent has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The address of the operator listener (`AgentOptions::metrics`), from the agent's log line
    /// `metrics listening local_addr=…`, once it is there.
    pub async fn ops_address(&self) -> anyhow::Result<SocketAddr> {
        wait_for(&format!("agent {}'s metrics listener", self.host_id), READY, || async {
            let log = self.log();
            let line = log.lines().find(|line| line.contains("metrics listening"))?;
            line.split_whitespace().find_map(|word| word.strip_prefix("local_addr=")?.parse().ok())
        })
        .await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Adds `agent:<host>` certificates to an existing TLS directory, signed by its CA (`lbfleet pki init`
/// keeps what is there and creates only what is missing).
pub fn add_agent_certs(lbfleet: &Path, tls_dir: &Path, hosts: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(lbfleet)
        .args(["pki", "init", "--dir"])
        .arg(tls_dir)
        .arg("--agent")
        .args(hosts)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", lbfleet.display()))?;
    if !output.status.success() {
        bail!("lbfleet pki init failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// One LB host of a fleet: its HAProxy container and the agent that drives it.
pub struct LbHost {
    /// Host id, as registered and named in the agent's certificate.
    pub id: String,
    /// The host's HAProxy container.
    pub lb: HaproxyBox,
    /// The host's agent.
    pub agent: AgentProcess,
}

/// How HAProxy is told to reach a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAddress {
    /// `<container>:80`, resolved through Docker's DNS (a stopped container's name stops resolving).
    ContainerName,
    /// `<ip>:80` on the lab's network: a stopped container's server has no name to lose.
    Ip,
}

/// How long `Fleet::cli` lets one CLI command run.
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// A one-node coordinator, LB hosts (HAProxy + agent) and nginx nodes on one Docker network,
/// with one lbfleet cluster registered. Agents, then the coordinator, then the containers go on drop.
pub struct Fleet {
    /// The LB hosts, in the order given.
    pub hosts: Vec<LbHost>,
    /// The coordinator process.
    pub coordinators: ProcessCluster,
    /// The containers and network.
    pub lab: Lab,
    /// The lbfleet cluster every host serves.
    pub cluster: String,
    coordinators_binary: PathBuf,
}

impl Fleet {
    /// Starts a coordinator, registers a cluster with `shard` (no nodes yet) and the hosts, starts
    /// their HAProxy containers and agents, and waits until every agent has applied the topology.
    pub async fn start(
        test: &str,
        cluster_options: ClusterOptions,
        agent_binary: &Path,
        shard: &str,
        hosts: &[(&str, AgentOptions)],
    ) -> anyhow::Result<Fleet> {
        let mut lab = Lab::new(test)?;
        let lbfleet = cluster_options.binary.clone();
        let coordinators = ProcessCluster::start_with(1, cluster_options)?;
        let ids: Vec<&str> = hosts.iter().map(|(id, _)| *id).collect();
        add_agent_certs(&lbfleet, &coordinators.tls_dir, &ids)?;
        let client = coordinators.client().await?;
        let cluster = "fleet".to_owned();
        client
            .write(Kind::CreateCluster(pb::CreateCluster { name: cluster.clone(), haproxy_container: String::new() }))
            .await?;
        let create = pb::CreateShard { name: shard.to_owned(), cluster: cluster.clone() };
        client.write(Kind::CreateShard(create)).await?;
        let mut boxes = Vec::new();
        let mut version = 0;
        for id in &ids {
            let lb = lab.start_haproxy(id, Mounts::ALL)?;
            let add = pb::AddHost {
                id: id.to_string(),
                cluster: cluster.clone(),
                address: String::new(),
                haproxy_container: lb.container.clone(),
            };
            version = client.write(Kind::AddHost(add)).await?.version;
            boxes.push(lb);
        }
        let mut fleet = Fleet { hosts: Vec::new(), coordinators, lab, cluster, coordinators_binary: lbfleet };
        // Agents meet HAProxy already running, as on a host where the container outlives the agent.
        for lb in &boxes {
            lb.wait_ready().await?;
        }
        for ((id, options), lb) in hosts.iter().zip(boxes) {
            let log_path = fleet.lab.dir().join(format!("agent-{id}.log"));
            let agent = AgentProcess::start(
                agent_binary,
                id,
                &fleet.coordinators.endpoints(),
                &fleet.coordinators.tls_dir,
                &lb,
                options,
                log_path,
            )?;
            fleet.hosts.push(LbHost { id: id.to_string(), lb, agent });
        }
        fleet.wait_applied(&client, version).await?;
        Ok(fleet)
    }

    /// A client connected to the coordinator.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.coordinators.client().await
    }

    /// The LB host `id`.
    pub fn host(&self, id: &str) -> &LbHost {
        self.hosts.iter().find(|h| h.id == id).unwrap_or_else(|| panic!("no LB host {id}"))
    }

    /// The LB host `id`, mutably.
    pub fn host_mut(&mut self, id: &str) -> &mut LbHost {
        self.hosts.iter_mut().find(|h| h.id == id).unwrap_or_else(|| panic!("no LB host {id}"))
    }

    /// Starts one nginx node per name in `nodes` and adds it to `shard` (on the first host); waits until applied.
    pub async fn add_nodes(&mut self, client: &Client, shard: &str, nodes: &[&str]) -> anyhow::Result<()> {
        self.add_nodes_with(client, shard, nodes, NodeAddress::ContainerName).await
    }

    /// Like `add_nodes`, with HAProxy reaching the nodes at `address`.
    pub async fn add_nodes_with(
        &mut self,
        client: &Client,
        shard: &str,
        nodes: &[&str],
        address: NodeAddress,
    ) -> anyhow::Result<()> {
        let mut version = 0;
        for node in nodes {
            let container = self.lab.start_node(node, shard)?;
            let host = match address {
                NodeAddress::ContainerName => container.clone(),
                NodeAddress::Ip => self.lab.ip(&container)?,
            };
            let add = pb::AddNode {
                name: node.to_string(),
                shard: shard.to_owned(),
                host: self.hosts[0].id.clone(),
                address: format!("{host}:80"),
                container,
            };
            version = client.write(Kind::AddNode(add)).await?.version;
        }
        self.wait_applied(client, version).await
    }

    /// The `lbfleet` CLI as the operator against this fleet's coordinator, with `args` after the
    /// global flags; for a command that runs while the test does something else.
    pub fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.coordinators_binary);
        command
            .arg("--endpoints")
            .arg(self.coordinators.endpoints().join(","))
            .arg("--tls-dir")
            .arg(&self.coordinators.tls_dir)
            .args(args)
            .env_remove("LBFLEET_JSON")
            .env("NO_COLOR", "1");
        command
    }

    /// Runs the `lbfleet` CLI (see `cli_command`) to its end, killing it after a minute.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Ran> {
        run(self.cli_command(args), CLI_DEADLINE).await
    }

    /// Binds `fqdn` to `shard` and waits until every host applied it (`bind --wait`); returns the version.
    pub async fn bind(&self, client: &Client, fqdn: &str, shard: &str) -> anyhow::Result<u64> {
        let bind = pb::Bind { fqdn: fqdn.to_owned(), shard: shard.to_owned(), cluster: String::new() };
        let version = client.write(Kind::Bind(bind)).await?.version;
        self.wait_applied(client, version).await?;
        Ok(version)
    }

    /// Binds every FQDN of `fqdns` to `shard` in one batch and waits until every host applied it.
    pub async fn bind_all(&self, client: &Client, fqdns: &[String], shard: &str) -> anyhow::Result<u64> {
        let entries = fqdns.iter().map(|fqdn| pb::BindEntry { fqdn: fqdn.clone(), shard: shard.to_owned() }).collect();
        let batch = pb::BindBatch { cluster: self.cluster.clone(), entries };
        let version = client.write(Kind::BindBatch(batch)).await?.version;
        self.wait_applied(client, version).await?;
        Ok(version)
    }

    /// Unbinds `fqdn` and waits until every host applied it (`unbind --wait`).
    pub async fn unbind(&self, client: &Client, fqdn: &str) -> anyhow::Result<u64> {
        let unbind = pb::Unbind { fqdn: fqdn.to_owned(), cluster: String::new() };
        let version = client.write(Kind::Unbind(unbind)).await?.version;
        self.wait_applied(client, version).await?;
        Ok(version)
    }

    /// Waits until every host of the cluster acknowledged `version`; the error quotes the agents' logs.
    pub async fn wait_applied(&self, client: &Client, version: u64) -> anyhow::Result<()> {
        let progress = client.wait_applied(&self.cluster, version, READY).await?;
        if !progress.done {
            bail!("version {version} not applied on every host: {:?}\n{}", progress.hosts, self.agent_logs());
        }
        Ok(())
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn agent_logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("--- agent {} ---\n{}", h.id, crate::process::tail(&h.agent.log(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// An HTTP answer: status, lower-case header names, body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// Headers in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpAnswer {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `GET /` with `Host: <host>` over a fresh connection.
pub async fn http_get(addr: SocketAddr, host: &str) -> anyhow::Result<HttpAnswer> {
    http_get_path(addr, host, "/", Duration::from_secs(5)).await
}

/// Sends `GET <path>` with `Host: <host>` over a fresh connection; `timeout` bounds the whole answer.
pub async fn http_get_path(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> anyhow::Result<HttpAnswer> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("GET {path} (Host: {host}) from {addr} took longer than {timeout:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).context("status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(HttpAnswer { status, headers, body: body.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_rows_are_servers_only() {
        let answer = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
            http,FRONTEND,,,3,5,,,,,,,,,,,,OPEN,\n\
            shard-web,n0,0,0,1,2,,9,,,,,,,,0,0,UP,1\n\
            shard-web,n1,0,0,0,0,,0,,,,,,,,0,0,MAINT (resolution),1\n\
            shard-web,BACKEND,0,0,1,2,,9,,,,,,,,0,0,UP,2\n";
        let servers = parse_show_stat(answer).unwrap();
        let rows: Vec<(&str, &str, &str, u64)> =
            servers.iter().map(|s| (s.backend.as_str(), s.server.as_str(), s.status.as_str(), s.sessions)).collect();
        assert_eq!(rows, [("shard-web", "n0", "UP", 1), ("shard-web", "n1", "MAINT (resolution)", 0)]);
        assert!(parse_show_stat("Unknown command.\n").is_err());
    }

    #[test]
    fn show_map_and_show_proc() {
        let map = parse_show_map("0x1 a.example.com shard-a\n0x2 b.example.com shard-b\n\n").unwrap();
        assert_eq!(map.get("b.example.com").map(String::as_str), Some("shard-b"));
        assert!(parse_show_map("0x1 lonely\n").is_err());
        let procs = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
            8               master          2 [failed: 0]   0d00h00m09s     3.0.11\n\
            # workers\n\
            31              worker          0               0d00h00m01s     3.0.11\n\
            # old workers\n\
            20              worker          1               0d00h00m05s     3.0.11\n";
        assert_eq!(current_worker(procs), Some(31));
        assert_eq!(current_worker("# workers\n"), None);
    }
}
