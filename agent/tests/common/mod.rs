//! Real-container fixtures for the driver tests: a test network, HAProxy and node
//! containers with host directories bind-mounted, removed again on drop.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

pub const HAPROXY_IMAGE: &str = "lbfleet/haproxy:dev";
pub const NODE_IMAGE: &str = "lbfleet/node:dev";
pub const MAP_PATH: &str = "/var/lib/haproxy/maps/fqdn-to-shard.map";

/// Whether Docker and the images are here. Without them the test fails when `CI` is set,
/// and otherwise says why it did nothing.
pub fn docker_available() -> bool {
    let probe =
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", HAPROXY_IMAGE, NODE_IMAGE]).output();
    let problem = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        Err(e) => format!("cannot run docker: {e}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("Docker or the lbfleet images are unavailable and CI is set ({problem}); build them with docker/build-images.sh");
    }
    eprintln!("note: Docker test not run: {problem} (build the images with docker/build-images.sh)");
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
#[derive(Clone, Copy)]
pub struct Mounts {
    pub sockets: bool,
    pub maps: bool,
    pub config: bool,
}

impl Mounts {
    pub const ALL: Mounts = Mounts { sockets: true, maps: true, config: true };
    pub const NONE: Mounts = Mounts { sockets: false, maps: false, config: false };
}

/// One HAProxy container of a lab.
pub struct HaproxyBox {
    pub container: String,
    /// Host directories; those not mounted exist but the container does not see them.
    pub socket_dir: PathBuf,
    pub map_dir: PathBuf,
    pub config_dir: PathBuf,
    pub mounts: Mounts,
}

impl HaproxyBox {
    /// `127.0.0.1:<port>` published for the container's :80; Docker picks a new port on every start.
    pub fn http(&self) -> SocketAddr {
        let port = docker(&["port", &self.container, "80/tcp"]).expect("docker port");
        port.lines().next().and_then(|line| line.parse().ok()).expect("published port")
    }
}

/// Containers and a network for one test; everything is removed on drop, also after a panic.
pub struct Lab {
    pub prefix: String,
    pub network: String,
    containers: Vec<String>,
    dirs: TempDir,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Creates the lab's network.
    pub fn new(test: &str) -> anyhow::Result<Lab> {
        let prefix = format!("lbft-{test}-{}-{}", std::process::id(), LABS.fetch_add(1, Ordering::Relaxed));
        let dirs = tempfile::Builder::new().prefix("lbfleet-haproxy-test-").tempdir()?;
        let lab = Lab { network: prefix.clone(), prefix, containers: Vec::new(), dirs };
        docker(&["network", "create", &lab.network])?;
        Ok(lab)
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
        args.push(HAPROXY_IMAGE.into());
        self.containers.push(container.clone());
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(HaproxyBox { container, socket_dir, map_dir, config_dir, mounts })
    }

    /// Starts an nginx node answering with `X-Shard: <shard>`; its container name is also its DNS name.
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
            NODE_IMAGE,
        ])?;
        Ok(container)
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

/// Retries `probe` until it returns `Some` or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP answer: status and lower-case header names.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `GET /` with `Host: <host>` over a fresh connection.
pub async fn http_get(addr: SocketAddr, host: &str) -> anyhow::Result<HttpAnswer> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await??;
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

/// Median and 99th percentile of `samples`.
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}
