//! The fleet of `deploy/` (3 coordinators, 2 LB hosts with agent and HAProxy, 4 nginx nodes),
//! brought up by `deploy/up.sh` under a compose project, container-name prefix, TLS directory
//! and ports of its own, so that it never meets a fleet someone deployed on the same engine;
//! plus the Docker-level faults the chaos tests put on it. Dropping it removes every container,
//! network and volume of its project, also after a panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::tls::TlsDir;
use tempfile::TempDir;

use crate::docker_lab::docker_available;
use crate::docker_lab::tool_answers;
use crate::docker_lab::MAP_PATH;
use crate::process::free_ports;
use crate::process::lbfleet_binary;
use crate::process::tail;

/// The cluster `deploy/up.sh` creates.
pub const CLUSTER: &str = "demo";
/// Its shards; `deploy/up.sh` puts the nodes of `web-N` on LB host `lb-N`.
pub const SHARDS: [&str; 2] = ["web-1", "web-2"];
/// The FQDNs `deploy/up.sh` binds, with their shards (passed to it as LBFLEET_DEMO_FQDN*).
pub const DEMO_FQDNS: [(&str, &str); 2] = [("demo.chaos.test", "web-1"), ("demo-2.chaos.test", "web-2")];
/// Raft node ids of the coordinators.
pub const COORDINATORS: [u64; 3] = [1, 2, 3];
/// LB host numbers: `lb-1`, `lb-2`.
pub const LB_HOSTS: [usize; 2] = [1, 2];
/// The deadline of every client call the harness makes (the CLI's default `--timeout`).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `deploy/up.sh` builds images when they are missing or stale; the base alone takes a minute.
const UP_DEADLINE: Duration = Duration::from_secs(600);
/// Any single docker or docker-compose command.
const DOCKER_DEADLINE: Duration = Duration::from_secs(90);
/// Lines of a log quoted in an error.
const LOG_LINES: usize = 40;

/// Whether Docker, docker-compose and the base images are here. Without them this panics when
/// `CI` is set and otherwise says why the test did nothing.
pub fn compose_available() -> bool {
    if !docker_available() {
        return false;
    }
    let probe = Command::new("docker-compose").arg("version").output();
    tool_answers(probe, "docker-compose", "docker-compose", "install Debian's docker-compose")
}

/// A finished command: whether it exited 0, what it printed, how long it took.
#[derive(Debug)]
pub struct Ran {
    /// Exit status 0.
    pub ok: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub took: Duration,
}

/// Runs `command` to its end, killing it after `deadline`.
pub async fn run(mut command: tokio::process::Command, deadline: Duration) -> anyhow::Result<Ran> {
    let what = format!("{:?}", command.as_std());
    command.kill_on_drop(true).stdin(Stdio::null());
    let started = Instant::now();
    let output = tokio::time::timeout(deadline, command.output())
        .await
        .with_context(|| format!("{what} did not finish within {deadline:?}"))?
        .with_context(|| format!("cannot run {what}"))?;
    Ok(Ran {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// Runs `docker args...` and returns its trimmed stdout; fails when it exits non-zero.
pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("docker");
    command.args(args);
    let ran = run(command, DOCKER_DEADLINE).await?;
    if !ran.ok {
        bail!("docker {} failed: {}", args.join(" "), ran.stderr.trim());
    }
    Ok(ran.stdout.trim().to_owned())
}

/// What `docker inspect` says about a container's main process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    /// Whether it runs.
    pub running: bool,
    /// When it last started (changes on every start).
    pub started_at: String,
    /// Its PID on the Docker host (0 when stopped).
    pub pid: u32,
}

/// A container taken off its network, and what it needs to join again under the same names.
#[derive(Debug)]
pub struct Cut {
    /// The container.
    pub container: String,
    network: String,
    aliases: Vec<String>,
}

/// The compose fleet; removed on drop.
pub struct ComposeFleet {
    /// The compose project; also a label on everything compose creates.
    pub project: String,
    /// Prepended to every container name.
    pub prefix: String,
    /// `LBFLEET_TLS_DIR` of the fleet.
    pub tls_dir: PathBuf,
    repo: PathBuf,
    bin_dir: PathBuf,
    env: Vec<(String, String)>,
    coordinator_ports: Vec<u16>,
    http_ports: Vec<u16>,
    dir: TempDir,
}

impl ComposeFleet {
    /// Runs `deploy/up.sh` for a fleet of its own, named after `test`, with the `lbfleet` and
    /// `lbfleet-agent` binaries the tests use (no release build).
    pub async fn up(test: &str) -> anyhow::Result<ComposeFleet> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize()?;
        let lbfleet = lbfleet_binary();
        let bin_dir = lbfleet.parent().context("the lbfleet binary has no directory")?.to_path_buf();
        anyhow::ensure!(
            bin_dir.join("lbfleet-agent").is_file(),
            "no lbfleet-agent next to {}: run `cargo build --bins`",
            lbfleet.display()
        );
        let dir = tempfile::Builder::new().prefix("lbfleet-compose-").tempdir()?;
        let tls_dir = dir.path().join("tls");
        let project = format!("lbft-{test}-{}", std::process::id());
        let prefix = format!("{project}-");
        let ports = free_ports(10)?;
        let (coordinator_ports, http_ports, stats_ports) = (ports[0..3].to_vec(), ports[3..5].to_vec(), &ports[5..7]);
        let page_ports = &ports[7..10];
        let mut env: Vec<(String, String)> = vec![
            ("LBFLEET_PROJECT".into(), project.clone()),
            ("LBFLEET_NAME_PREFIX".into(), prefix.clone()),
            ("LBFLEET_TLS_DIR".into(), tls_dir.display().to_string()),
            ("LBFLEET_BIN_DIR".into(), bin_dir.display().to_string()),
            ("LBFLEET_DEMO_FQDN".into(), DEMO_FQDNS[0].0.into()),
            ("LBFLEET_DEMO_FQDN_2".into(), DEMO_FQDNS[1].0.into()),
        ];
        for (i, (port, page)) in coordinator_ports.iter().zip(page_ports).enumerate() {
            env.push((format!("LBFLEET_PORT_{}", i + 1), port.to_string()));
            env.push((format!("LBFLEET_PAGE_PORT_{}", i + 1), page.to_string()));
        }
        for (i, (http, stats)) in http_ports.iter().zip(stats_ports).enumerate() {
            env.push((format!("LBFLEET_HTTP_PORT_LB_{}", i + 1), http.to_string()));
            env.push((format!("LBFLEET_STATS_PORT_LB_{}", i + 1), stats.to_string()));
        }
        // From here on a failure still removes whatever up.sh created.
        let fleet = ComposeFleet { project, prefix, tls_dir, repo, bin_dir, env, coordinator_ports, http_ports, dir };
        let log = fleet.dir.path().join("up.log");
        let mut command = tokio::process::Command::new(fleet.repo.join("deploy/up.sh"));
        // The CLI calls in up.sh must not pick up an operator's own settings.
        command.envs(fleet.env.iter().map(|(k, v)| (k, v)));
        for inherited in ["LBFLEET_ENDPOINTS", "LBFLEET_IDENTITY", "LBFLEET_JSON", "LBFLEET_TIMEOUT"] {
            command.env_remove(inherited);
        }
        command.stdout(std::fs::File::create(&log)?).stderr(std::fs::File::create(fleet.dir.path().join("up.err"))?);
        let started = Instant::now();
        let ran = run(command, UP_DEADLINE).await;
        let output = format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(fleet.dir.path().join("up.err")).unwrap_or_default()
        );
        match ran {
            Ok(ran) if ran.ok => {}
            Ok(_) => bail!("deploy/up.sh failed:\n{}", tail(&output, 60)),
            Err(e) => bail!("{e}:\n{}", tail(&output, 60)),
        }
        println!("deploy/up.sh: fleet {} up in {:.1?}", fleet.project, started.elapsed());
        Ok(fleet)
    }

    /// The TLS directory of the operator's certificate: its own bundle directory when the PKI
    /// makes one per identity, else the shared one.
    pub fn admin_tls_dir(&self) -> PathBuf {
        let bundle = self.tls_dir.join("admin-operator");
        if bundle.is_dir() {
            bundle
        } else {
            self.tls_dir.clone()
        }
    }

    /// The operator's client credentials.
    pub fn client_tls(&self) -> anyhow::Result<Arc<Credentials>> {
        let tls = TlsDir::new(self.admin_tls_dir());
        Ok(Credentials::client(&tls, &tls.admin_identity(None)?)?)
    }

    /// For every container of the fleet, the private keys found anywhere in its file system, each
    /// named by whose key it is (`ca` or an identity's file stem, `unknown` for a key that is
    /// neither). Keys are recognized by content, so a copy under another name counts too.
    pub async fn keys_held(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut owners = BTreeMap::new();
        owners.insert(sha256_hex(&std::fs::read(self.tls_dir.join("ca.key"))?), "ca".to_string());
        for entry in std::fs::read_dir(&self.tls_dir)? {
            let bundle = entry?.path();
            let stem = bundle.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let key = bundle.join(format!("{stem}.key"));
            if key.is_file() {
                owners.insert(sha256_hex(&std::fs::read(&key)?), stem);
            }
        }
        let label = format!("label=com.docker.compose.project={}", self.project);
        let containers = docker(&["ps", "--filter", &label, "--format", "{{.Names}}"]).await?;
        let mut held = BTreeMap::new();
        for container in containers.lines().filter(|name| !name.is_empty()) {
            // Every regular file outside the kernel's trees whose content looks like a private key.
            let script = "find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -type f -size -64k -print0 \
                          | xargs -0 grep -l -Z -- '-----BEGIN .*PRIVATE KEY-----' 2>/dev/null \
                          | xargs -0 -r sha256sum";
            let found = docker(&["exec", container, "sh", "-c", script]).await?;
            let names: Vec<String> = found
                .lines()
                .filter_map(|line| line.split_whitespace().next())
                .map(|hash| owners.get(hash).cloned().unwrap_or_else(|| "unknown".to_string()))
                .collect();
            held.insert(container.to_string(), names);
        }
        Ok(held)
    }

    /// The coordinators' gRPC endpoints on the host, in node id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.coordinator_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect()
    }

    /// The host endpoint of coordinator `id`.
    pub fn endpoint(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.coordinator_ports[id as usize - 1])
    }

    /// A client of the group, connected to the leader when one is known.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.endpoints(), &TlsDir::new(self.admin_tls_dir()), None, CLIENT_TIMEOUT).await?)
    }

    /// The status of coordinator `id` as that node itself sees it.
    pub async fn node_status(&self, id: u64, tls: &Arc<Credentials>) -> anyhow::Result<pb::StatusReply> {
        Ok(Client::status_of(&self.endpoint(id), tls, Duration::from_secs(3)).await?)
    }

    /// The id of the node that says it is the leader, once one does (bounded by `within`).
    pub async fn leader(&self, within: Duration) -> anyhow::Result<u64> {
        let tls = self.client_tls()?;
        let deadline = Instant::now() + within;
        loop {
            let mut last = String::new();
            for id in COORDINATORS {
                match self.node_status(id, &tls).await {
                    Ok(status) if status.has_leader && status.current_leader == id => return Ok(id),
                    Ok(status) => last = format!("node {id}: {} (leader {})", status.state, status.current_leader),
                    Err(e) => last = format!("node {id}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                bail!("no coordinator leads after {within:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Container name of coordinator `id`.
    pub fn coordinator(&self, id: u64) -> String {
        format!("{}lbfleet-coordinator-{id}", self.prefix)
    }

    /// Container name of the agent of LB host `lb`.
    pub fn agent(&self, lb: usize) -> String {
        format!("{}lbfleet-agent-lb-{lb}", self.prefix)
    }

    /// Container name of the HAProxy of LB host `lb`.
    pub fn haproxy(&self, lb: usize) -> String {
        format!("{}hosting-haproxy-lb-{lb}", self.prefix)
    }

    /// HAProxy's HTTP port of LB host `lb` on the host.
    pub fn http(&self, lb: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_ports[lb - 1]))
    }

    /// Runs `docker-compose` on the fleet's project with the environment `deploy/up.sh` had.
    pub async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::new("docker-compose");
        command
            .args(["-p", &self.project, "-f"])
            .arg(self.repo.join("deploy/docker-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let ran = run(command, DOCKER_DEADLINE).await?;
        if !ran.ok {
            bail!("docker-compose {} failed: {}", args.join(" "), ran.stderr.trim());
        }
        Ok(ran.stdout)
    }

    /// Runs the `lbfleet` CLI on the host against every coordinator, as the operator.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Ran> {
        let mut command = tokio::process::Command::new(self.bin_dir.join("lbfleet"));
        command
            .arg("--endpoints")
            .arg(self.endpoints().join(","))
            .arg("--tls-dir")
            .arg(self.admin_tls_dir())
            .args(args);
        run(command, CLIENT_TIMEOUT * 3).await
    }

    /// Runs the `lbfleet` CLI in the network namespace of `container` (which may be cut off
    /// every network), talking to the coordinator at 127.0.0.1:7400 there. `took` is the CLI's
    /// own run time, measured in the container, without the container's start.
    pub async fn cli_inside(&self, container: &str, args: &[&str]) -> anyhow::Result<Ran> {
        let tag = std::env::var("LBFLEET_TAG").unwrap_or_else(|_| "dev".into());
        let volume = format!("{}:/tls:ro", self.admin_tls_dir().display());
        let timed = r#"start=$(date +%s%N); lbfleet --endpoints 127.0.0.1:7400 --tls-dir /tls "$@"; code=$?
            echo "cli-took-ns=$(($(date +%s%N) - start))" >&2; exit $code"#;
        let mut command = tokio::process::Command::new("docker");
        command
            .args(["run", "--rm", "--name", &format!("{}cli", self.prefix), "--network"])
            .arg(format!("container:{container}"))
            .args(["-v", &volume, "--entrypoint", "sh", &format!("lbfleet/coordinator:{tag}"), "-c", timed, "sh"])
            .args(args);
        let mut ran = run(command, DOCKER_DEADLINE).await?;
        let took = ran.stderr.lines().find_map(|line| line.strip_prefix("cli-took-ns=")).and_then(|ns| ns.parse().ok());
        ran.took =
            Duration::from_nanos(took.with_context(|| format!("the CLI's run time is missing: {}", ran.stderr))?);
        ran.stderr = ran.stderr.lines().filter(|line| !line.starts_with("cli-took-ns=")).collect::<Vec<_>>().join("\n");
        Ok(ran)
    }

    /// Running state, start time and PID of `container`.
    pub async fn process_state(&self, container: &str) -> anyhow::Result<ProcessState> {
        let out =
            docker(&["inspect", "-f", "{{.State.Running}} {{.State.StartedAt}} {{.State.Pid}}", container]).await?;
        let fields: Vec<&str> = out.split_whitespace().collect();
        anyhow::ensure!(fields.len() == 3, "unexpected inspect output {out:?}");
        Ok(ProcessState { running: fields[0] == "true", started_at: fields[1].to_owned(), pid: fields[2].parse()? })
    }

    /// Takes `container` off the fleet's network, remembering its aliases.
    pub async fn cut(&self, container: &str) -> anyhow::Result<Cut> {
        let json = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", container]).await?;
        let networks: BTreeMap<String, serde_json::Value> = serde_json::from_str(&json)?;
        let (network, endpoint) = match networks.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => one.clone(),
            several => bail!("{container} is on {} networks, expected one", several.len()),
        };
        let aliases = endpoint["Aliases"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        docker(&["network", "disconnect", &network, container]).await?;
        Ok(Cut { container: container.to_owned(), network, aliases })
    }

    /// Puts a cut container back on its network under the names its peers dial.
    pub async fn heal(&self, cut: Cut) -> anyhow::Result<()> {
        let mut args = vec!["network", "connect"];
        for alias in &cut.aliases {
            args.extend(["--alias", alias.as_str()]);
        }
        args.extend([cut.network.as_str(), cut.container.as_str()]);
        docker(&args).await.map(drop)
    }

    /// Sends one command to the runtime API of LB host `lb`'s HAProxy (socat in its container).
    pub async fn haproxy_admin(&self, lb: usize, command: &str) -> anyhow::Result<String> {
        let script = r#"echo "$1" | socat -t 5 stdio UNIX-CONNECT:/var/run/haproxy/admin.sock"#;
        docker(&["exec", &self.haproxy(lb), "sh", "-c", script, "sh", command]).await
    }

    /// HAProxy's runtime FQDN map on LB host `lb`, as `(fqdn, backend)` pairs in its order
    /// (a key held twice shows twice).
    pub async fn show_map(&self, lb: usize) -> anyhow::Result<Vec<(String, String)>> {
        let answer = self.haproxy_admin(lb, &format!("show map {MAP_PATH}")).await?;
        answer
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [_id, key, value] => Ok((key.to_string(), value.to_string())),
                _ => bail!("unexpected `show map` line on lb-{lb}: {line:?}"),
            })
            .collect()
    }

    /// PID of the HAProxy worker of LB host `lb` (`show info`); a reload changes it.
    pub async fn worker_pid(&self, lb: usize) -> anyhow::Result<u32> {
        let info = self.haproxy_admin(lb, "show info").await?;
        info.lines()
            .find_map(|line| line.strip_prefix("Pid:"))
            .and_then(|pid| pid.trim().parse().ok())
            .with_context(|| format!("no Pid in `show info` of lb-{lb}: {info:?}"))
    }

    /// `haproxy.cfg` of LB host `lb`, read in its HAProxy container.
    pub async fn haproxy_cfg(&self, lb: usize) -> anyhow::Result<String> {
        docker(&["exec", &self.haproxy(lb), "cat", "/usr/local/etc/haproxy/haproxy.cfg"]).await
    }

    /// The last `lines` lines `container` logged (stdout and stderr), optionally since a
    /// `docker logs --since` time.
    pub async fn logs(&self, container: &str, since: Option<&str>, lines: usize) -> String {
        let mut command = tokio::process::Command::new("docker");
        command.arg("logs");
        if let Some(since) = since {
            command.args(["--since", since]);
        }
        command.args(["--tail", &lines.to_string(), container]);
        match run(command, DOCKER_DEADLINE).await {
            Ok(ran) => format!("{}{}", ran.stdout, ran.stderr),
            Err(e) => format!("(no logs: {e})"),
        }
    }

    /// The last lines of every lbfleet container's log, for failure messages.
    pub async fn fleet_logs(&self) -> String {
        let mut text = String::new();
        let containers =
            COORDINATORS.iter().map(|id| self.coordinator(*id)).chain(LB_HOSTS.iter().map(|lb| self.agent(*lb)));
        for container in containers {
            text.push_str(&format!("--- {container} ---\n{}\n", self.logs(&container, None, LOG_LINES).await));
        }
        text
    }

    /// A directory of the fleet on the host, removed with it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn remove_leftovers(&self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let name = format!("name=^/{}", self.prefix);
        let list = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let mut containers = list(&["ps", "-aq", "--filter", &label]);
        containers.extend(list(&["ps", "-aq", "--filter", &name]));
        containers.sort();
        containers.dedup();
        let removals = [
            (vec!["rm", "-f", "-v"], containers),
            (vec!["volume", "rm", "-f"], list(&["volume", "ls", "-q", "--filter", &label])),
            (vec!["network", "rm"], list(&["network", "ls", "-q", "--filter", &label])),
        ];
        for (command, ids) in removals {
            if ids.is_empty() {
                continue;
            }
            match Command::new("docker").args(&command).args(&ids).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: docker {}: {}", command.join(" "), String::from_utf8_lossy(&out.stderr)),
                Err(e) => eprintln!("cleanup: docker {}: {e}", command.join(" ")),
            }
        }
    }
}

impl Drop for ComposeFleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for container in
                COORDINATORS.iter().map(|id| self.coordinator(*id)).chain(LB_HOSTS.iter().map(|lb| self.agent(*lb)))
            {
                if let Ok(out) = Command::new("docker").args(["logs", "--tail", "25", &container]).output() {
                    eprintln!(
                        "--- {container} ---\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let down = Command::new(self.repo.join("deploy/down.sh"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("cleanup: deploy/down.sh failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("cleanup: cannot run deploy/down.sh: {e}"),
        }
        // Whatever down.sh left: a half-made up, a failed down, the CLI container.
        self.remove_leftovers();
    }
}

/// The SHA-256 of `bytes` in lowercase hex, as `sha256sum` prints it.
fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}
