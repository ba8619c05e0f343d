//! The coordinator's fleet status page in a real browser: headless Chromium loads it from a
//! running fleet (coordinator, two LB hosts with HAProxy and agents, nginx nodes), the rendered
//! text shows the hosts, their acknowledged version and the servers' health, and a screenshot
//! is kept under the target directory for CI.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use lbfleet_tests::docker_lab::docker_available;
use lbfleet_tests::docker_lab::http_get_path;
use lbfleet_tests::docker_lab::tool_answers;
use lbfleet_tests::docker_lab::AgentOptions;
use lbfleet_tests::docker_lab::Fleet;
use lbfleet_tests::docker_lab::READY;
use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::target_dir;
use lbfleet_tests::process::ClusterOptions;

const SHARD: &str = "web-1";
const NODES: &[&str] = &["web-1-node-1", "web-1-node-2"];
const HOSTS: &[&str] = &["lb-a", "lb-b"];
/// Bound on one run of the browser.
const BROWSER: Duration = Duration::from_secs(90);

/// Whether Debian's `chromium` is installed; like `docker_available`, this panics when it is not
/// and `CI` is set.
fn chromium_available() -> bool {
    let probe = std::process::Command::new("chromium").arg("--version").stdin(Stdio::null()).output();
    tool_answers(probe, "chromium", "chromium", "install it: apt-get install chromium (tests/run.sh does it as root)")
}

/// Runs headless Chromium on `url` with `args`, in a profile of its own; returns its stdout.
async fn chromium(url: &str, args: &[&str], profile: &Path) -> anyhow::Result<String> {
    let run = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(BROWSER, run).await.with_context(|| format!("chromium took over {BROWSER:?}"))??;
    anyhow::ensure!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits until the page, fetched over plain HTTP, shows every server UP on every host at `version`.
async fn page_settled(address: SocketAddr, version: u64) -> anyhow::Result<()> {
    let cells = NODES.len() * HOSTS.len();
    wait_for("every server UP on every host on the page", READY, || async {
        let page = http_get_path(address, "localhost", "/", Duration::from_secs(5)).await.ok()?;
        let up = page.body.matches(">UP · ").count();
        (page.status == 200 && up == cells && page.body.contains(&format!(">{version}<"))).then_some(())
    })
    .await
}

/// The table row of `dom` that contains `needle`.
fn row_of<'a>(dom: &'a str, needle: &str) -> Option<&'a str> {
    dom.split("<tr>").map(|row| row.split("</tr>").next().unwrap_or(row)).find(|row| row.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_fleet_in_a_browser() -> anyhow::Result<()> {
    if !docker_available() || !chromium_available() {
        return Ok(());
    }
    let options = ClusterOptions { metrics: true, ..ClusterOptions::default() };
    let hosts: Vec<(&str, AgentOptions)> = HOSTS.iter().map(|h| (*h, AgentOptions::default())).collect();
    let mut fleet = Fleet::start("status-page", options, &agent_binary(), SHARD, &hosts).await?;
    let client = fleet.client().await?;
    fleet.add_nodes(&client, SHARD, NODES).await?;
    let version = fleet.bind(&client, "shop.example.com", SHARD).await?;
    let address = fleet.coordinators.metrics_addr(0).await?;
    page_settled(address, version).await?;

    let url = format!("http://{address}/");
    let profile = tempfile::tempdir()?;
    let dom = chromium(&url, &["--dump-dom"], profile.path()).await?;
    assert!(dom.contains("lbfleet coordinator · node 1"), "{dom}");
    assert!(dom.contains(">leader<"), "the node's role: {dom}");
    for host in HOSTS {
        let row = row_of(&dom, &format!("<strong>{host}</strong>")).with_context(|| format!("no row of {host}"))?;
        assert!(row.contains("ok\">connected<"), "{host}'s agent connected: {row}");
        assert!(row.contains(&format!("<td class=\"num\">{version}</td>")), "{host} acknowledged {version}: {row}");
        assert!(row.contains("<td class=\"num short ok\">0</td>"), "{host} without lag: {row}");
    }
    for node in NODES {
        let row = row_of(&dom, &format!("<td>{node}</td>")).with_context(|| format!("no row of {node}"))?;
        assert_eq!(row.matches(">UP · ").count(), HOSTS.len(), "{node} UP on every host: {row}");
        assert!(row.contains("<td>shard-web-1</td>"), "{row}");
    }
    assert!(dom.contains("<td>fleet</td>"), "the cluster: {dom}");

    let screenshot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    chromium(&url, &[shot.as_str(), "--window-size=1280,1600"], profile.path()).await?;
    let png = std::fs::read(&screenshot).with_context(|| format!("no screenshot at {}", screenshot.display()))?;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    println!("screenshot: {}", screenshot.display());
    Ok(())
}
