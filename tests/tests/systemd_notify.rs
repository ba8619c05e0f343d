//! The daemons under a service manager: with NOTIFY_SOCKET and WATCHDOG_USEC set, as systemd
//! sets them for `Type=notify` and `WatchdogSec=`, each says READY=1 once it runs and then pings
//! the watchdog at half the interval; a frozen coordinator stops pinging, so systemd would
//! restart it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;
use std::time::Instant;

use lbfleet_tests::process::agent_binary;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ClusterOptions;
use lbfleet_tests::process::ProcessCluster;

/// What systemd would hear on its notification socket within `within`, one datagram per entry.
fn heard(socket: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut heard = Vec::new();
    let mut buffer = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buffer) {
            Ok(read) => heard.push(String::from_utf8_lossy(&buffer[..read]).into_owned()),
            Err(_) => break,
        }
    }
    heard
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_says_ready_and_pings_the_watchdog_while_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("notify");
    let manager = UnixDatagram::bind(&path)?;
    let env = vec![
        ("NOTIFY_SOCKET".to_string(), path.display().to_string()),
        // 400 ms: a ping every 200 ms.
        ("WATCHDOG_USEC".to_string(), "400000".to_string()),
    ];
    let mut cluster = ProcessCluster::start_with(1, ClusterOptions { env, ..ClusterOptions::default() })?;
    cluster.client().await?;

    let first = heard(&manager, Duration::from_secs(3));
    assert_eq!(first.first().map(String::as_str), Some("READY=1"), "{first:?}\n{}", cluster.log(0));
    let pings = first.iter().filter(|message| *message == "WATCHDOG=1").count();
    assert!(pings >= 5, "expected a ping every 200 ms for 3 s, heard {first:?}");

    // A frozen process pings no more: systemd would kill and restart it after WatchdogSec.
    cluster.freeze(0);
    let _ = heard(&manager, Duration::from_millis(300)); // what was in flight
    let frozen = heard(&manager, Duration::from_secs(1));
    cluster.thaw(0);
    assert!(frozen.is_empty(), "a frozen node pinged: {frozen:?}");
    let thawed = heard(&manager, Duration::from_secs(2));
    assert!(thawed.iter().any(|message| message == "WATCHDOG=1"), "no ping after thawing: {thawed:?}");
    cluster.terminate(0);
    Ok(())
}

#[test]
fn the_agent_says_ready_and_pings_the_watchdog() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    let pki = std::process::Command::new(lbfleet_binary())
        .args(["pki", "init", "--coordinator", "1", "--agent", "lb-x", "--admin", "op", "--dir"])
        .arg(&tls)
        .output()?;
    anyhow::ensure!(pki.status.success(), "pki init: {}", String::from_utf8_lossy(&pki.stderr));
    let path = dir.path().join("notify");
    let manager = UnixDatagram::bind(&path)?;
    // No coordinator answers on port 1: the agent keeps looking for one, and is live meanwhile.
    let log = std::fs::File::create(dir.path().join("agent.log"))?;
    let mut agent = std::process::Command::new(agent_binary())
        .args(["--host-id", "lb-x", "--endpoints", "127.0.0.1:1", "--tls-dir"])
        .arg(&tls)
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let messages = heard(&manager, Duration::from_secs(2));
    let _ = agent.kill();
    let _ = agent.wait();
    let output = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert_eq!(messages.first().map(String::as_str), Some("READY=1"), "{messages:?}\n{output}");
    let pings = messages.iter().filter(|message| *message == "WATCHDOG=1").count();
    assert!(pings >= 3, "expected a ping every 200 ms for 2 s, heard {messages:?}\n{output}");
    Ok(())
}
