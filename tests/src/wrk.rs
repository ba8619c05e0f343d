//! Load from `wrk` (Debian's package) and the figures of its report, errors first: a test of
//! reloads under load counts every failed request, socket errors included.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// What one wrk run is asked to do.
#[derive(Debug, Clone)]
pub struct WrkLoad {
    /// `-t`: threads.
    pub threads: u32,
    /// `-c`: connections, kept alive between requests.
    pub connections: u32,
    /// `-d`: how long it sends at most (`WrkRun::finish` may stop it earlier).
    pub duration: Duration,
    /// `--timeout`: a request slower than this counts as a timeout error.
    pub timeout: Duration,
}

/// The figures of a wrk report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrkReport {
    /// Requests completed.
    pub requests: u64,
    /// Connections that could not be opened (`Socket errors: connect N`; 0 when wrk printed no such line).
    pub connect_errors: u64,
    /// Reads that failed, e.g. a connection closed under a request (`read N`).
    pub read_errors: u64,
    /// Writes that failed (`write N`).
    pub write_errors: u64,
    /// Requests without an answer within `--timeout` (`timeout N`).
    pub timeouts: u64,
    /// `Non-2xx or 3xx responses: N`.
    pub non_2xx_3xx: u64,
    /// `Requests/sec`, as printed.
    pub requests_per_sec: String,
}

impl WrkReport {
    /// Every failed request: socket errors of all kinds and answers that were not 2xx/3xx.
    pub fn failures(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.timeouts + self.non_2xx_3xx
    }

    /// Reads wrk's text report.
    pub fn parse(output: &str) -> anyhow::Result<WrkReport> {
        let mut report = WrkReport::default();
        let mut saw_total = false;
        for line in output.lines().map(str::trim) {
            if let Some((count, _)) = line.split_once(" requests in ") {
                report.requests = count.parse().with_context(|| format!("request count in {line:?}"))?;
                saw_total = true;
            } else if let Some(errors) = line.strip_prefix("Socket errors:") {
                for part in errors.split(',') {
                    let (kind, count) = part.trim().split_once(' ').with_context(|| format!("{line:?}"))?;
                    let count: u64 = count.trim().parse().with_context(|| format!("{line:?}"))?;
                    match kind {
                        "connect" => report.connect_errors = count,
                        "read" => report.read_errors = count,
                        "write" => report.write_errors = count,
                        "timeout" => report.timeouts = count,
                        other => anyhow::bail!("unknown socket error kind {other:?} in {line:?}"),
                    }
                }
            } else if let Some(count) = line.strip_prefix("Non-2xx or 3xx responses:") {
                report.non_2xx_3xx = count.trim().parse().with_context(|| format!("{line:?}"))?;
            } else if let Some(rate) = line.strip_prefix("Requests/sec:") {
                report.requests_per_sec = rate.trim().to_owned();
            }
        }
        anyhow::ensure!(saw_total, "no `N requests in` line in wrk's output:\n{output}");
        Ok(report)
    }
}

/// The Lua script that spreads wrk's requests over `hosts` (one `Host` header per request, in turn).
pub fn host_rotation_script(hosts: &[String]) -> String {
    let quoted: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "local hosts = {{{}}}\nlocal next_host = 0\nrequest = function()\n  next_host = next_host % #hosts + 1\n  \
         return wrk.format(\"GET\", \"/\", {{Host = hosts[next_host]}})\nend\n",
        quoted.join(", ")
    )
}

/// A wrk process sending load; killed on drop.
pub struct WrkRun {
    child: tokio::process::Child,
    load: WrkLoad,
}

impl WrkRun {
    /// Starts wrk against `addr` with `script`; it stops by itself after `load.duration` at the latest.
    pub fn start(addr: SocketAddr, load: &WrkLoad, script: &Path) -> anyhow::Result<WrkRun> {
        let child = tokio::process::Command::new("wrk")
            .args(["-t", &load.threads.to_string(), "-c", &load.connections.to_string()])
            .args(["-d", &format!("{}s", load.duration.as_secs().max(1))])
            .args(["--timeout", &format!("{}s", load.timeout.as_secs().max(1))])
            .arg("-s")
            .arg(script)
            .arg(format!("http://{addr}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start wrk")?;
        Ok(WrkRun { child, load: load.clone() })
    }

    /// Whether wrk has ended (its time is up, or it failed).
    pub fn has_ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the load now (SIGINT: wrk then reports what it did so far) and returns wrk's report
    /// and its whole output.
    pub async fn finish(mut self) -> anyhow::Result<(WrkReport, String)> {
        if let (false, Some(pid)) = (self.has_ended(), self.child.id()) {
            let pid = Pid::from_raw(i32::try_from(pid).context("wrk's pid")?);
            // It may end by itself between the check and the signal; then there is no one to tell.
            let _ = nix::sys::signal::kill(pid, Signal::SIGINT);
        }
        let deadline = self.load.timeout + Duration::from_secs(30);
        let output = tokio::time::timeout(deadline, self.child.wait_with_output())
            .await
            .with_context(|| format!("wrk did not end within {deadline:?} of being told to stop"))??;
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        anyhow::ensure!(output.status.success(), "wrk failed ({}): {}\n{stdout}", output.status, stderr.trim());
        Ok((WrkReport::parse(&stdout)?, format!("{stdout}{stderr}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_with_errors() {
        let output = "Running 20s test @ http://127.0.0.1:32768/\n  2 threads and 32 connections\n  \
            Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     2.10ms    1.20ms  30.00ms   90.00%\n  \
            300123 requests in 20.00s, 50.00MB read\n  Socket errors: connect 1, read 3, write 0, timeout 2\n  \
            Non-2xx or 3xx responses: 12\nRequests/sec:  15006.15\nTransfer/sec:      2.50MB\n";
        let report = WrkReport::parse(output).unwrap();
        assert_eq!(
            (report.requests, report.connect_errors, report.read_errors, report.timeouts, report.non_2xx_3xx),
            (300123, 1, 3, 2, 12)
        );
        assert_eq!(report.failures(), 18);
        assert_eq!(report.requests_per_sec, "15006.15");
    }

    #[test]
    fn a_clean_report_and_a_broken_one() {
        let clean = WrkReport::parse("  1000 requests in 1.00s, 1.00MB read\nRequests/sec: 1000.00\n").unwrap();
        assert_eq!((clean.requests, clean.failures()), (1000, 0));
        assert!(WrkReport::parse("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
    }

    #[test]
    fn the_script_names_every_host() {
        let script = host_rotation_script(&["a.example.com".into(), "b.example.com".into()]);
        assert!(script.contains("{\"a.example.com\", \"b.example.com\"}"), "{script}");
    }
}
