//! A coordinator process re-reads its certificates on SIGHUP and keeps running; renewed in
//! place by `lbfleet pki renew`, its new certificate is in use from the next connection.

use std::time::Duration;

use lbfleet_tests::poll::wait_for;
use lbfleet_tests::process::lbfleet_binary;
use lbfleet_tests::process::ProcessCluster;

/// Far more than a SIGHUP takes to be handled, less than a hang.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_certificates_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let cluster = ProcessCluster::start(1)?;
    cluster.client().await?.status().await?;

    // Nothing changed: the node says so, and SIGHUP's default (terminating) does not happen.
    cluster.hang_up(0);
    wait_for("the SIGHUP to be handled", WAIT, || async {
        cluster.log(0).contains("SIGHUP: certificates unchanged").then_some(())
    })
    .await?;
    assert!(cluster.is_running(0), "the node exited on SIGHUP:\n{}", cluster.log(0));

    let output = std::process::Command::new(lbfleet_binary())
        .args(["pki", "renew", "--coordinator", "1", "--dir"])
        .arg(&cluster.tls_dir)
        .output()?;
    anyhow::ensure!(output.status.success(), "pki renew failed: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let serial = printed.split("(serial ").nth(1).and_then(|rest| rest.split(')').next()).unwrap_or_default();
    anyhow::ensure!(!serial.is_empty(), "pki renew printed no serial: {printed}");

    cluster.hang_up(0);
    wait_for("the renewed certificate to be in use", WAIT, || async {
        let log = cluster.log(0);
        (log.contains("renewed certificates in use") && log.contains(serial)).then_some(())
    })
    .await?;
    // A new connection handshakes with the renewed certificate and is served.
    let status = cluster.client().await?.status().await?;
    assert_eq!(status.node_id, 1);
    assert!(cluster.is_running(0), "the node exited:\n{}", cluster.log(0));
    Ok(())
}
