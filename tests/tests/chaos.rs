//! Chaos on the fleet of `deploy/` (docker-compose: 3 coordinators, 2 LB hosts with agent and
//! HAProxy, 4 nginx nodes), brought up by `deploy/up.sh` under names and ports of its own.
//!
//! One client streams binds, unbinds and moves through each fault. Once the fault is healed the
//! whole history is checked: every acknowledged write is in the group's state, every coordinator
//! applied it and every HAProxy holds it; nothing appears that was never asked for; an FQDN
//! whose last acknowledged write was an unbind is absent; a write whose outcome the client could
//! not know (it failed while a node failed) may have happened or not. At the end every
//! coordinator is stopped and its own Raft log is read back from its data directory.
//! Each fault prints one line of figures.
//!
//! Without Docker this fails when `CI` is set and otherwise does nothing. Needs
//! `cargo build --bins` first (`tests/run.sh` does it).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use futures::StreamExt;
use lbfleet_coordinator::ctl::client::Client;
use lbfleet_coordinator::ctl::client::ClientError;
use lbfleet_coordinator::raft::durable::DurableDb;
use lbfleet_coordinator::raft::log_store::LogStore;
use lbfleet_coordinator::raft::state_machine::StateMachineStore;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::names::lb_backend;
use lbfleet_proto::pb;
use lbfleet_proto::pb::command::Kind;
use lbfleet_proto::tls::TlsDir;
use lbfleet_proto::transport;
use lbfleet_tests::compose_fleet::compose_available;
use lbfleet_tests::compose_fleet::docker;
use lbfleet_tests::compose_fleet::ComposeFleet;
use lbfleet_tests::compose_fleet::CLIENT_TIMEOUT;
use lbfleet_tests::compose_fleet::CLUSTER;
use lbfleet_tests::compose_fleet::COORDINATORS;
use lbfleet_tests::compose_fleet::DEMO_FQDNS;
use lbfleet_tests::compose_fleet::LB_HOSTS;
use lbfleet_tests::compose_fleet::SHARDS;
use lbfleet_tests::docker_lab::http_get;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;

/// Pause between two writes of the stream: enough to exercise every path, little enough for a
/// 2-core machine that also runs the fleet.
const PACE: Duration = Duration::from_millis(40);
/// Pause after a failed write, so a group that is down is not hammered.
const PACE_AFTER_FAILURE: Duration = Duration::from_millis(200);
/// Bounds on one stream (one fault).
const MAX_WRITES: usize = 3_000;
const MAX_STREAM: Duration = Duration::from_secs(180);
/// Writes before a fault and after its heal.
const WARM_UP: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(3);
/// How long the fleet may take to converge after a heal.
const CONVERGE: Duration = Duration::from_secs(45);
/// The longest one client call (connect, then write) may take: finding the leader probes the
/// endpoints and then the leader they name, each for at most 3 s; the write gives up after the
/// client's timeout.
const CALL_BOUND: Duration = Duration::from_secs(3 + 3 + CLIENT_TIMEOUT.as_secs());
/// A leader killed, frozen or cut off: election (under a second) plus the client's 2 s attempt,
/// with room for a busy 2-core machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);
/// The issue's bound for a broken haproxy.cfg: served again within 10 s of the restart.
const SERVED_AGAIN_BOUND: Duration = Duration::from_secs(10);
/// `--timeout` of the write sent to a cut-off coordinator.
const MINORITY_TIMEOUT_SECS: u64 = 5;

/// Prints a line past the test harness's output capture: the figures belong in the log of
/// every run, passed or failed.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// What the group holds for one FQDN: absent, or bound to a shard.
type Held = Option<&'static str>;

fn show(held: Held) -> String {
    held.map_or_else(|| "nothing".to_owned(), |shard| format!("shard {shard}"))
}

/// What the history allows for one FQDN.
#[derive(Debug, Clone)]
enum Expect {
    /// Its last write was acknowledged.
    Known(Held),
    /// A write of unknown outcome: any of these. No write follows it.
    Unsure(BTreeSet<Held>),
}

#[derive(Debug, Clone)]
enum Write {
    Bind { fqdn: String, shard: &'static str },
    Unbind { fqdn: String },
}

impl Write {
    fn fqdn(&self) -> &str {
        match self {
            Write::Bind { fqdn, .. } | Write::Unbind { fqdn } => fqdn,
        }
    }

    fn target(&self) -> Held {
        match self {
            Write::Bind { shard, .. } => Some(shard),
            Write::Unbind { .. } => None,
        }
    }

    fn command(&self) -> Kind {
        match self {
            Write::Bind { fqdn, shard } => {
                Kind::Bind(pb::Bind { fqdn: fqdn.clone(), shard: shard.to_string(), cluster: String::new() })
            }
            Write::Unbind { fqdn } => Kind::Unbind(pb::Unbind { fqdn: fqdn.clone(), cluster: String::new() }),
        }
    }
}

#[derive(Debug, Clone)]
enum Outcome {
    /// Committed at this version.
    Acked(u64),
    /// Failed while a node failed: it may have been committed.
    Unknown(String),
    /// Certainly not written: no coordinator was reached, or the group said nothing was written.
    NotSent(String),
    /// The group refused it: never expected here.
    Refused(String),
}

impl Outcome {
    /// The error the client saw, for the report.
    fn error(&self) -> Option<&str> {
        match self {
            Outcome::Acked(_) => None,
            Outcome::Unknown(e) | Outcome::NotSent(e) | Outcome::Refused(e) => Some(e),
        }
    }
}

/// What the client can know from an error.
fn outcome_of(write: &Write, error: ClientError) -> Outcome {
    let status = match &error {
        ClientError::Status(status) | ClientError::NotAcknowledged { last: status, .. } => status,
        _ => return Outcome::NotSent(error.to_string()),
    };
    // An unbind is not resent after a node failed, so a retryable error at the end means no
    // attempt wrote anything. A bind may have been resent after an attempt of unknown outcome.
    if matches!(write, Write::Unbind { .. }) && transport::is_retryable(status) {
        return Outcome::NotSent(error.to_string());
    }
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted
        | Code::Internal => Outcome::Unknown(error.to_string()),
        _ => Outcome::Refused(error.to_string()),
    }
}

/// The history of every FQDN the stream wrote, and the next writes to make.
struct Model {
    fqdns: BTreeMap<String, Expect>,
    created: u64,
    rng: u64,
}

impl Model {
    fn new(seed: u64) -> Model {
        Model { fqdns: BTreeMap::new(), created: 0, rng: seed | 1 }
    }

    /// xorshift64*: enough to mix the writes, and reproducible from the seed printed.
    fn random(&mut self, below: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % below
    }

    /// A bind of a new FQDN (most writes), or an unbind or a move of one known to be bound.
    fn next_write(&mut self) -> Write {
        let roll = self.random(10);
        let bound = |fqdns: &BTreeMap<String, Expect>| {
            fqdns
                .iter()
                .filter_map(|(fqdn, expect)| match expect {
                    Expect::Known(Some(shard)) => Some((fqdn.clone(), *shard)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let count = self.fqdns.values().filter(|expect| matches!(expect, Expect::Known(Some(_)))).count();
        if roll < 6 || count == 0 {
            self.created += 1;
            let fqdn = format!("w{}.chaos.test", self.created);
            return Write::Bind { fqdn, shard: SHARDS[self.random(SHARDS.len())] };
        }
        let pick = self.random(count);
        let (fqdn, shard) = bound(&self.fqdns).swap_remove(pick);
        if roll < 8 {
            Write::Unbind { fqdn }
        } else {
            let other = SHARDS.iter().copied().find(|s| *s != shard).expect("two shards");
            Write::Bind { fqdn, shard: other }
        }
    }

    fn record(&mut self, write: &Write, outcome: &Outcome) {
        let before = match self.fqdns.get(write.fqdn()) {
            Some(Expect::Known(held)) => *held,
            Some(Expect::Unsure(_)) => unreachable!("no write follows one of unknown outcome"),
            None => None,
        };
        let after = match outcome {
            Outcome::Acked(_) => Expect::Known(write.target()),
            Outcome::NotSent(_) if self.fqdns.contains_key(write.fqdn()) => return,
            Outcome::NotSent(_) => Expect::Known(None),
            Outcome::Unknown(_) | Outcome::Refused(_) => Expect::Unsure([before, write.target()].into()),
        };
        self.fqdns.insert(write.fqdn().to_owned(), after);
    }

    /// FQDNs whose state is known: `(fqdn, held)`.
    fn known(&self) -> impl Iterator<Item = (&str, Held)> {
        self.fqdns.iter().filter_map(|(fqdn, expect)| match expect {
            Expect::Known(held) => Some((fqdn.as_str(), *held)),
            Expect::Unsure(_) => None,
        })
    }
}

/// One write of the stream.
struct Record {
    started: Instant,
    took: Duration,
    outcome: Outcome,
}

impl Record {
    fn ended(&self) -> Instant {
        self.started + self.took
    }
}

/// A client writing in the background, as an operator's scripts would, until stopped.
struct Stream {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<(Model, Vec<Record>)>,
}

impl Stream {
    fn start(endpoints: Vec<String>, tls: TlsDir, model: Model) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(write_stream(endpoints, tls, model, stop.clone(), acked.clone()));
        Stream { stop, acked, handle }
    }

    /// Waits until `more` writes were acknowledged after this call.
    async fn wait_acks(&self, more: u64, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let target = self.acked.load(Ordering::Relaxed) + more;
        while self.acked.load(Ordering::Relaxed) < target {
            if started.elapsed() > within || self.handle.is_finished() {
                bail!("{more} writes were not acknowledged within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    async fn finish(self) -> anyhow::Result<(Model, Vec<Record>)> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(CALL_BOUND + PACE_AFTER_FAILURE * 2, self.handle)
            .await
            .context("the write stream did not stop after its last call")?
            .context("the write stream panicked")
    }
}

async fn write_stream(
    endpoints: Vec<String>,
    tls: TlsDir,
    mut model: Model,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> (Model, Vec<Record>) {
    let mut client: Option<Client> = None;
    let mut records = Vec::new();
    let begun = Instant::now();
    while !stop.load(Ordering::Relaxed) && records.len() < MAX_WRITES && begun.elapsed() < MAX_STREAM {
        let write = model.next_write();
        let started = Instant::now();
        let connected = match client.take() {
            Some(client) => Ok(client),
            None => Client::connect(&endpoints, &tls, None, CLIENT_TIMEOUT).await,
        };
        let outcome = match connected {
            Err(error) => Outcome::NotSent(error.to_string()),
            Ok(connected) => match connected.write(write.command()).await {
                Ok(reply) => {
                    client = Some(connected);
                    Outcome::Acked(reply.version)
                }
                // A fresh connection next time finds the leader again.
                Err(error) => outcome_of(&write, error),
            },
        };
        let took = started.elapsed();
        model.record(&write, &outcome);
        let ok = matches!(outcome, Outcome::Acked(_));
        records.push(Record { started, took, outcome });
        if ok {
            acked.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(if ok { PACE } else { PACE_AFTER_FAILURE }).await;
    }
    (model, records)
}

/// A pause between two acknowledgements longer than this is an interruption of the stream:
/// acknowledgements come every `PACE` plus one commit otherwise.
const INTERRUPTION: Duration = Duration::from_millis(500);

/// How long after `at` writes are acknowledged again: the end of the first interruption of
/// the acknowledgements after `at` that began before `until` (the heal: what follows it is
/// the heal's doing), else the first acknowledgement after `at`.
fn ok_again(records: &[Record], at: Instant, until: Option<Instant>) -> Option<Duration> {
    let mut acks: Vec<Instant> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Acked(_)))
        .map(Record::ended)
        .filter(|end| *end > at)
        .collect();
    acks.sort();
    let first = *acks.first()?;
    let mut previous = at;
    for ack in acks {
        if until.is_some_and(|until| previous >= until) {
            break;
        }
        if ack - previous > INTERRUPTION {
            return Some(ack - at);
        }
        previous = ack;
    }
    Some(first - at)
}

/// The figures of one fault.
struct Figures {
    fault: String,
    ok_again: Option<Duration>,
    after_heal: Option<Duration>,
    issued: usize,
    acked: usize,
    failed: usize,
    bound_found: usize,
    bound_expected: usize,
    unsure_present: usize,
    unsure: usize,
    longest: Duration,
}

impl Figures {
    fn header() -> String {
        format!(
            "{:<44} {:>9} {:>10} {:>6} {:>6} {:>6} {:>11} {:>9} {:>9}",
            "fault", "ok again", "after heal", "issued", "acked", "failed", "bound found", "unsure in", "longest"
        )
    }

    fn line(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
        format!(
            "{:<44} {:>9} {:>10} {:>6} {:>6} {:>6} {:>11} {:>9} {:>9}",
            self.fault,
            ms(self.ok_again),
            ms(self.after_heal),
            self.issued,
            self.acked,
            self.failed,
            format!("{}/{}", self.bound_found, self.bound_expected),
            format!("{}/{}", self.unsure_present, self.unsure),
            ms(Some(self.longest)),
        )
    }
}

/// What a history check found.
struct Checked {
    /// The group's bindings: FQDN -> shard.
    held: BTreeMap<String, String>,
    version: u64,
    bound_found: usize,
    bound_expected: usize,
    unsure_present: usize,
    unsure: usize,
}

struct Chaos<'a> {
    fleet: &'a ComposeFleet,
    tls: Arc<Credentials>,
    model: Option<Model>,
    /// What the last check found the group (and every HAProxy) to hold.
    held: BTreeMap<String, String>,
    /// FQDNs written only to a coordinator cut off from the others: never committed.
    never_committed: Vec<String>,
    figures: Vec<Figures>,
}

impl<'a> Chaos<'a> {
    fn begin(&mut self) -> Stream {
        let model = self.model.take().expect("one stream at a time");
        Stream::start(self.fleet.endpoints(), TlsDir::new(self.fleet.admin_tls_dir()), model)
    }

    /// Stops the stream, checks the whole history and records the fault's figures.
    async fn end(
        &mut self,
        stream: Stream,
        fault: String,
        fault_at: Instant,
        heal_at: Instant,
    ) -> anyhow::Result<&Figures> {
        let (model, records) = stream.finish().await?;
        self.model = Some(model);
        let refused: Vec<&str> = records
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Refused(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        anyhow::ensure!(refused.is_empty(), "{fault}: the group refused writes it should take: {refused:?}");
        let checked = self.check_history().await.with_context(|| format!("history check after: {fault}"))?;
        let figures = Figures {
            fault,
            ok_again: ok_again(&records, fault_at, Some(heal_at)),
            after_heal: ok_again(&records, heal_at, None),
            issued: records.len(),
            acked: records.iter().filter(|r| matches!(r.outcome, Outcome::Acked(_))).count(),
            failed: records.iter().filter(|r| !matches!(r.outcome, Outcome::Acked(_))).count(),
            bound_found: checked.bound_found,
            bound_expected: checked.bound_expected,
            unsure_present: checked.unsure_present,
            unsure: checked.unsure,
            longest: records.iter().map(|r| r.took).max().unwrap_or_default(),
        };
        report!("{}\n{}  (version {})", Figures::header(), figures.line(), checked.version);
        for record in records.iter().filter(|r| r.outcome.error().is_some()).take(3) {
            report!("    failed after {:?}: {}", record.took, record.outcome.error().unwrap_or_default());
        }
        let newest =
            records.iter().filter_map(|r| if let Outcome::Acked(v) = r.outcome { Some(v) } else { None }).max();
        anyhow::ensure!(
            newest.is_none_or(|v| v <= checked.version),
            "a write was acknowledged at version {newest:?}, after the version the group reads ({})",
            checked.version
        );
        anyhow::ensure!(
            figures.longest <= CALL_BOUND,
            "{}: a client call took {:?}, over {CALL_BOUND:?}",
            figures.fault,
            figures.longest
        );
        self.held = checked.held;
        self.figures.push(figures);
        Ok(self.figures.last().expect("just pushed"))
    }

    /// The history check: the group's state against the model, every coordinator's applied
    /// version, every HAProxy's map against the group's state.
    async fn check_history(&self) -> anyhow::Result<Checked> {
        let model = self.model.as_ref().expect("the stream has ended");
        let view = self.cluster_view().await?;
        let held: BTreeMap<String, String> = view.bindings.into_iter().map(|b| (b.fqdn, b.shard)).collect();
        let held_as = |fqdn: &str| -> Held {
            held.get(fqdn).map(|shard| SHARDS.iter().copied().find(|s| s == shard).unwrap_or("(unknown shard)"))
        };
        let mut problems = Vec::new();
        for (fqdn, shard) in DEMO_FQDNS {
            if held_as(fqdn) != Some(shard) {
                problems
                    .push(format!("{fqdn}: bound by deploy/up.sh to {shard}, the group holds {}", show(held_as(fqdn))));
            }
        }
        let (mut bound_found, mut bound_expected, mut unsure_present, mut unsure) = (0, 0, 0, 0);
        for (fqdn, expect) in &model.fqdns {
            let actual = held_as(fqdn);
            match expect {
                Expect::Known(want) => {
                    bound_expected += usize::from(want.is_some());
                    if actual != *want {
                        problems.push(format!(
                            "{fqdn}: acknowledged {}, the group holds {}",
                            show(*want),
                            show(actual)
                        ));
                    } else if want.is_some() {
                        bound_found += 1;
                    }
                }
                Expect::Unsure(allowed) => {
                    unsure += 1;
                    unsure_present += usize::from(actual.is_some());
                    if !allowed.contains(&actual) {
                        problems.push(format!("{fqdn}: the group holds {}, never asked for", show(actual)));
                    }
                }
            }
        }
        for fqdn in held.keys() {
            if !model.fqdns.contains_key(fqdn) && !DEMO_FQDNS.iter().any(|(demo, _)| demo == fqdn) {
                problems.push(format!("{fqdn}: held by the group, never asked for"));
            }
        }
        for fqdn in &self.never_committed {
            if held.contains_key(fqdn) {
                problems.push(format!("{fqdn}: only a cut-off coordinator took it, yet it is committed"));
            }
        }
        if !problems.is_empty() {
            bail!(
                "{} problems in the group's state at version {}:\n  {}",
                problems.len(),
                view.version,
                problems.join("\n  ")
            );
        }

        self.all_applied(view.version).await?;

        let mut want: Vec<(String, String)> =
            held.iter().map(|(fqdn, shard)| (fqdn.clone(), lb_backend(shard))).collect();
        want.sort();
        for lb in LB_HOSTS {
            self.map_converges(lb, &want).await?;
        }
        Ok(Checked { held, version: view.version, bound_found, bound_expected, unsure_present, unsure })
    }

    /// A linearizable view of the cluster, once the group answers.
    async fn cluster_view(&self) -> anyhow::Result<pb::ClusterView> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let last = match self.fleet.client().await {
                Ok(client) => match client.cluster(CLUSTER, None).await {
                    Ok(view) => return Ok(view),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("no view of cluster {CLUSTER} within {CONVERGE:?}: {last}\n{}", self.fleet.fleet_logs().await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every coordinator, asked directly, has applied `version`.
    async fn all_applied(&self, version: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let mut behind = Vec::new();
            for id in COORDINATORS {
                match self.fleet.node_status(id, &self.tls).await {
                    Ok(status) if status.applied_index >= version => {}
                    Ok(status) => behind.push(format!("node {id} applied {}", status.applied_index)),
                    Err(e) => behind.push(format!("node {id}: {e}")),
                }
            }
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not every coordinator applied version {version} within {CONVERGE:?}: {}", behind.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until LB host `lb`'s HAProxy holds exactly `want` (sorted), each key once.
    async fn map_converges(&self, lb: usize, want: &[(String, String)]) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let last = match self.fleet.show_map(lb).await {
                Ok(mut got) => {
                    got.sort();
                    if got == want {
                        return Ok(());
                    }
                    map_differences(want, &got)
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "lb-{lb}: HAProxy's map still differs from the group's state after {CONVERGE:?}: {last}\n{}",
                    self.fleet.logs(&self.fleet.agent(lb), None, 40).await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Missing, extra and different keys between two sorted maps, a few of each.
fn map_differences(want: &[(String, String)], got: &[(String, String)]) -> String {
    let want_map: BTreeMap<&str, &str> = want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut got_map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in got {
        got_map.entry(k).or_default().push(v);
    }
    let missing: Vec<&str> = want_map.keys().filter(|k| !got_map.contains_key(*k)).copied().collect();
    let extra: Vec<&str> = got_map.keys().filter(|k| !want_map.contains_key(*k)).copied().collect();
    let wrong: Vec<String> = got_map
        .iter()
        .filter_map(|(k, vs)| {
            let want = want_map.get(k)?;
            (vs.len() != 1 || vs[0] != *want).then(|| format!("{k} -> {vs:?} instead of {want}"))
        })
        .collect();
    let few = |v: &[&str]| v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    format!(
        "{} missing ({}), {} extra ({}), {} wrong ({})",
        missing.len(),
        few(&missing),
        extra.len(),
        few(&extra),
        wrong.len(),
        wrong.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )
}

/// GETs every FQDN of `held` through LB host `lb` and checks the shard that answers (X-Shard),
/// and that each of `absent` gets the 404 of an unknown site.
async fn check_routing(
    fleet: &ComposeFleet,
    lb: usize,
    held: &BTreeMap<String, String>,
    absent: &[String],
) -> anyhow::Result<()> {
    let addr = fleet.http(lb);
    let expected = held.iter().map(|(fqdn, shard)| (fqdn.clone(), Some(shard.clone())));
    let expected = expected.chain(absent.iter().map(|fqdn| (fqdn.clone(), None)));
    let wrong: Vec<String> = futures::stream::iter(expected)
        .map(|(fqdn, shard)| async move {
            match (http_get(addr, &fqdn).await, shard) {
                (Ok(answer), Some(shard))
                    if answer.status == 200 && answer.header("x-shard") == Some(shard.as_str()) =>
                {
                    None
                }
                (Ok(answer), None) if answer.status == 404 => None,
                (Ok(answer), shard) => Some(format!(
                    "{fqdn}: {} X-Shard {:?}, expected {}",
                    answer.status,
                    answer.header("x-shard"),
                    shard.as_deref().unwrap_or("404")
                )),
                (Err(e), _) => Some(format!("{fqdn}: {e}")),
            }
        })
        .buffer_unordered(8)
        .filter_map(|wrong| async move { wrong })
        .collect()
        .await;
    anyhow::ensure!(
        wrong.is_empty(),
        "lb-{lb} routes {} FQDNs wrongly: {}",
        wrong.len(),
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("; ")
    );
    Ok(())
}

/// `lbfleet --json status`, its agent entry for `host`.
async fn agent_status(fleet: &ComposeFleet, host: &str) -> anyhow::Result<serde_json::Value> {
    let ran = fleet.cli(&["--json", "status"]).await?;
    anyhow::ensure!(ran.ok, "lbfleet status failed: {}", ran.stderr.trim());
    let status: serde_json::Value = serde_json::from_str(&ran.stdout)?;
    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    agents.into_iter().find(|a| a["host"] == host).with_context(|| format!("no agent {host} in {status}"))
}

fn lag_of(agent: &serde_json::Value) -> u64 {
    agent["lag"].as_u64().or_else(|| agent["lag"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

/// Some FQDNs certainly absent (unbound or never bound), to check the 404s.
fn absent_sample(model: &Model) -> Vec<String> {
    model.known().filter(|(_, held)| held.is_none()).map(|(fqdn, _)| fqdn.to_owned()).take(30).collect()
}

/// Sends a bind to the coordinator in `container` only, from inside its network namespace; it
/// must fail with an error that says why, within its deadline. Returns the FQDN.
async fn minority_write(fleet: &ComposeFleet, container: &str, fqdn: &str) -> anyhow::Result<()> {
    let timeout = MINORITY_TIMEOUT_SECS.to_string();
    let ran = fleet.cli_inside(container, &["--timeout", &timeout, "bind", fqdn, SHARDS[0]]).await?;
    report!("    write to the cut-off {container}: exit ok={} after {:?}: {}", ran.ok, ran.took, ran.stderr.trim());
    anyhow::ensure!(!ran.ok, "a bind sent only to the cut-off {container} succeeded: {}", ran.stdout.trim());
    // Finding the leader takes at most the timeout, and the write gives up after it; a second
    // of slack for the process itself.
    let bound = Duration::from_secs(2 * MINORITY_TIMEOUT_SECS + 1);
    anyhow::ensure!(ran.took <= bound, "the write to the cut-off {container} took {:?}, over {bound:?}", ran.took);
    let said = ran.stderr.to_lowercase();
    anyhow::ensure!(
        ["leader", "deadline", "did not answer", "unavailable", "timed out", "unreachable"]
            .iter()
            .any(|word| said.contains(word)),
        "the failed write to the cut-off {container} does not say why: {:?}",
        ran.stderr.trim()
    );
    Ok(())
}

/// Runs `docker <action> <container>` for every container at once.
async fn docker_each(action: &[&str], containers: &[String]) -> anyhow::Result<()> {
    let runs = containers.iter().map(|container| {
        let mut args = action.to_vec();
        args.push(container);
        async move { docker(&args).await }
    });
    for result in futures::future::join_all(runs).await {
        result?;
    }
    Ok(())
}

/// Restores each coordinator's state from its own data directory (a copy): its snapshot and
/// its log entries up to `version`, applied the way the node applies them.
async fn state_on_disk(sled: &Path, version: u64) -> anyhow::Result<BTreeMap<String, String>> {
    let db = DurableDb::open(sled)?;
    let mut log = LogStore::open(&db)?;
    let mut machine = StateMachineStore::open(&db)?;
    let (applied, _) = machine.applied_state().await?;
    let from = applied.map_or(0, |id| id.index + 1);
    let last = log.get_log_state().await?.last_log_id.map_or(0, |id| id.index);
    anyhow::ensure!(last >= version, "{} holds log entries up to {last}, not {version}", sled.display());
    let entries = log.try_get_log_entries(from..=version).await?;
    anyhow::ensure!(
        entries.len() as u64 == version + 1 - from,
        "{}: {} log entries from {from} to {version}",
        sled.display(),
        entries.len()
    );
    machine.apply(entries).await?;
    let shared = machine.shared();
    let applied = shared.read();
    let cluster = applied.state.clusters.get(CLUSTER).with_context(|| format!("no cluster {CLUSTER} on disk"))?;
    Ok(cluster.bindings.iter().map(|(fqdn, shard)| (fqdn.as_str().to_owned(), shard.clone())).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_keeps_every_acknowledged_write_through_faults() -> anyhow::Result<()> {
    if !compose_available() {
        return Ok(());
    }
    let started = Instant::now();
    let fleet = ComposeFleet::up("chaos").await?;
    each_container_holds_its_own_key_only(&fleet).await?;
    bind_verify_on_every_host(&fleet).await?;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    report!("write stream seed {seed}");
    let mut chaos = Chaos {
        fleet: &fleet,
        tls: fleet.client_tls()?,
        model: Some(Model::new(seed)),
        held: BTreeMap::new(),
        never_committed: Vec::new(),
        figures: Vec::new(),
    };
    let result = all_faults(&mut chaos).await;
    report!("\nchaos on the compose fleet, {:.0?} in all:\n{}", started.elapsed(), Figures::header());
    for figures in &chaos.figures {
        report!("{}", figures.line());
    }
    if result.is_err() {
        eprintln!("{}", fleet.fleet_logs().await);
    }
    result
}

/// Both agents' compose healthchecks (their `/readyz`) pass; then `bind --wait --verify`
/// returns once both LB hosts served a new FQDN from its shard through their own HAProxy (each
/// agent's end-to-end probe), and says which node answered on each. The FQDN is unbound again,
/// so the write stream's model starts from the demo bindings only.
async fn bind_verify_on_every_host(fleet: &ComposeFleet) -> anyhow::Result<()> {
    let started = Instant::now();
    for lb in LB_HOSTS {
        let agent = fleet.agent(lb);
        lbfleet_tests::poll::wait_for(&format!("{agent} to be healthy"), Duration::from_secs(60), || async {
            let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &agent]).await.ok()?;
            (health == "healthy").then_some(())
        })
        .await?;
    }
    let fqdn = "verify.chaos.test";
    let ran = fleet.cli(&["bind", fqdn, SHARDS[0], "--verify"]).await?;
    anyhow::ensure!(ran.ok, "bind --verify failed:\n{}{}", ran.stdout, ran.stderr);
    for lb in LB_HOSTS {
        let served = format!("lb-{lb}: served by {}-node-", SHARDS[0]);
        anyhow::ensure!(ran.stdout.contains(&served), "no {served:?} in:\n{}", ran.stdout);
    }
    let unbound = fleet.cli(&["unbind", fqdn, "--wait"]).await?;
    anyhow::ensure!(unbound.ok, "unbind failed: {}", unbound.stderr);
    report!("bind --verify: served from {} on both LB hosts ({:.1?})", SHARDS[0], started.elapsed());
    Ok(())
}

/// No container holds the CA key or another identity's key: a coordinator or agent container
/// holds its own key, and the HAProxy and nginx containers none.
async fn each_container_holds_its_own_key_only(fleet: &ComposeFleet) -> anyhow::Result<()> {
    let started = Instant::now();
    let held = fleet.keys_held().await?;
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    for id in COORDINATORS {
        own.insert(fleet.coordinator(id), format!("coordinator-{id}"));
    }
    for lb in LB_HOSTS {
        own.insert(fleet.agent(lb), format!("agent-lb-{lb}"));
    }
    for container in own.keys() {
        anyhow::ensure!(held.contains_key(container), "{container} is not among the fleet's containers: {held:?}");
    }
    for (container, keys) in &held {
        let expected: Vec<String> = own.get(container).cloned().into_iter().collect();
        anyhow::ensure!(keys == &expected, "{container} holds the keys {keys:?}; it may hold only {expected:?}");
    }
    report!("keys: {} containers, each holds its own key only ({:.1?})", held.len(), started.elapsed());
    Ok(())
}

async fn all_faults(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    kill_the_leader(chaos).await?;
    freeze_the_leader(chaos).await?;
    cut_a_coordinator_off(chaos, false).await?;
    cut_a_coordinator_off(chaos, true).await?;
    restart_every_coordinator(chaos).await?;
    cut_an_agent_off(chaos).await?;
    recreate_an_haproxy(chaos).await?;
    break_an_haproxy_config(chaos).await?;
    restart_an_agent_without_coordinators(chaos).await?;
    every_disk_holds_the_history(chaos).await
}

/// The leader is killed (SIGKILL), then started again from its data.
async fn kill_the_leader(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let leader = fleet.leader(CONVERGE).await?;
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    docker(&["kill", &fleet.coordinator(leader)]).await?;
    let fault_at = Instant::now();
    stream.wait_acks(5, CONVERGE).await.context("writes after the leader was killed")?;
    tokio::time::sleep(SETTLE).await;
    docker(&["start", &fleet.coordinator(leader)]).await?;
    let heal_at = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let figures = chaos.end(stream, format!("leader {leader} SIGKILL, started again"), fault_at, heal_at).await?;
    anyhow::ensure!(
        figures.ok_again.is_some_and(|d| d <= FAILOVER_BOUND),
        "writes did not resume in time after the kill"
    );
    Ok(())
}

/// The new leader is frozen (SIGSTOP) for 10 s, then goes on (SIGCONT).
async fn freeze_the_leader(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let leader = fleet.leader(CONVERGE).await?;
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    docker(&["kill", "-s", "STOP", &fleet.coordinator(leader)]).await?;
    let fault_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    docker(&["kill", "-s", "CONT", &fleet.coordinator(leader)]).await?;
    let heal_at = Instant::now();
    stream.wait_acks(5, CONVERGE).await?;
    tokio::time::sleep(SETTLE).await;
    let figures = chaos.end(stream, format!("leader {leader} SIGSTOP 10 s, SIGCONT"), fault_at, heal_at).await?;
    anyhow::ensure!(
        figures.ok_again.is_some_and(|d| d <= FAILOVER_BOUND),
        "writes did not resume while the leader was frozen"
    );
    Ok(())
}

/// A follower or the leader cut off the network: it cannot commit and says so, the majority
/// keeps taking writes, and all converge once it is back.
async fn cut_a_coordinator_off(chaos: &mut Chaos<'_>, the_leader: bool) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let leader = fleet.leader(CONVERGE).await?;
    let node = if the_leader { leader } else { COORDINATORS.into_iter().find(|id| *id != leader).expect("3 nodes") };
    let container = fleet.coordinator(node);
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    let cut = fleet.cut(&container).await?;
    let fault_at = Instant::now();
    let fqdn = format!("minority-{node}-{}.chaos.test", usize::from(the_leader));
    chaos.never_committed.push(fqdn.clone());
    let written = minority_write(fleet, &container, &fqdn).await;
    let served = stream.wait_acks(5, CONVERGE).await.context("the majority stopped taking writes");
    fleet.heal(cut).await?;
    let heal_at = Instant::now();
    written?;
    served?;
    stream.wait_acks(3, CONVERGE).await?;
    tokio::time::sleep(SETTLE).await;
    let role = if the_leader { "leader" } else { "follower" };
    let figures = chaos.end(stream, format!("{role} {node} cut off the network"), fault_at, heal_at).await?;
    anyhow::ensure!(figures.ok_again.is_some_and(|d| d <= FAILOVER_BOUND), "the majority did not take writes in time");
    Ok(())
}

/// All three coordinators restarted at once.
async fn restart_every_coordinator(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    let fault_at = Instant::now();
    docker_each(&["restart", "-t", "5"], &COORDINATORS.map(|id| fleet.coordinator(id))).await?;
    let heal_at = Instant::now();
    stream.wait_acks(5, CONVERGE).await.context("writes after restarting every coordinator")?;
    tokio::time::sleep(SETTLE).await;
    chaos.end(stream, "all 3 coordinators restarted at once".into(), fault_at, heal_at).await?;
    Ok(())
}

/// lb-1's agent cut off the coordinators: HAProxy keeps routing what it holds, `lbfleet status`
/// shows the agent falling behind, and it catches up once back.
async fn cut_an_agent_off(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let cut = fleet.cut(&fleet.agent(1)).await?;
    let fault_at = Instant::now();
    // What lb-1 holds: the last check saw it, and nothing was written since.
    let held_before = chaos.held.clone();
    let absent = absent_sample(chaos.model.as_ref().expect("no stream runs"));
    let stream = chaos.begin();
    let lag = lag_while_cut_off(fleet).await;
    let routed = check_routing(fleet, 1, &held_before, &absent).await;
    fleet.heal(cut).await?;
    let heal_at = Instant::now();
    let lag = lag?;
    routed?;
    report!("    while cut off, lbfleet status: lb-1 connected={} lag={}", lag["connected"], lag_of(&lag));
    tokio::time::sleep(SETTLE).await;
    chaos.end(stream, "lb-1 agent cut off the coordinators".into(), fault_at, heal_at).await?;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let status = agent_status(fleet, "lb-1").await?;
        if status["connected"] == true && lag_of(&status) == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "lb-1 did not catch up in lbfleet status: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check_routing(fleet, 1, &chaos.held, &absent).await
}

/// Waits until `lbfleet status` shows lb-1 behind; returns its entry.
async fn lag_while_cut_off(fleet: &ComposeFleet) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let status = agent_status(fleet, "lb-1").await?;
        if lag_of(&status) > 0 {
            return Ok(status);
        }
        anyhow::ensure!(Instant::now() < deadline, "lbfleet status never showed lb-1 behind: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// lb-2's HAProxy container removed and created again by compose: the agent gives the new one
/// its config and map.
async fn recreate_an_haproxy(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let absent = absent_sample(chaos.model.as_ref().expect("no stream runs"));
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    docker(&["rm", "-f", &fleet.haproxy(2)]).await?;
    let fault_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.compose(&["up", "-d", "--no-deps", "haproxy-lb-2"]).await?;
    let heal_at = Instant::now();
    stream.wait_acks(5, CONVERGE).await?;
    tokio::time::sleep(SETTLE).await;
    chaos.end(stream, "lb-2 HAProxy container removed, recreated".into(), fault_at, heal_at).await?;
    let (config_1, config_2) = (fleet.haproxy_cfg(1).await?, fleet.haproxy_cfg(2).await?);
    anyhow::ensure!(config_2.contains("backend shard-web-2"), "lb-2 runs without the rendered config:\n{config_2}");
    anyhow::ensure!(config_1 == config_2, "lb-1 and lb-2 run different configs");
    check_routing(fleet, 2, &chaos.held, &absent).await
}

/// lb-1's haproxy.cfg edited into one HAProxy refuses, and HAProxy restarted: it exits on it;
/// the agent puts back the rendered config and starts the container again.
async fn break_an_haproxy_config(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let rendered = fleet.haproxy_cfg(1).await?;
    let absent = absent_sample(chaos.model.as_ref().expect("no stream runs"));
    // Sites the stream never writes to again: the demo ones and those of unknown outcome. The
    // stream moves and unbinds the others meanwhile; all are checked once it stops.
    let model = chaos.model.as_ref().expect("no stream runs");
    let steady: BTreeMap<String, String> = chaos
        .held
        .iter()
        .filter(|(fqdn, _)| matches!(model.fqdns.get(*fqdn), None | Some(Expect::Unsure(_))))
        .map(|(fqdn, shard)| (fqdn.clone(), shard.clone()))
        .collect();
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    let mut attempts = 0;
    let (fault_at, served_after) = loop {
        attempts += 1;
        let since = docker(&["info", "-f", "{{.SystemTime}}"]).await?;
        let edit = r#"echo 'not-a-haproxy-keyword' >> /usr/local/etc/haproxy/haproxy.cfg"#;
        docker(&["exec", &fleet.haproxy(1), "sh", "-c", edit]).await?;
        let fault_at = Instant::now();
        docker(&["restart", "-t", "2", &fleet.haproxy(1)]).await?;
        let deadline = fault_at + CONVERGE;
        let mut last = check_routing(fleet, 1, &steady, &[]).await;
        while let Err(error) = last {
            anyhow::ensure!(
                Instant::now() < deadline,
                "lb-1 still not serving {CONVERGE:?} after the restart: {error:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = check_routing(fleet, 1, &steady, &[]).await;
        }
        let served_after = fault_at.elapsed();
        // The agent may have put the file back between the edit and the restart; then HAProxy
        // never saw it, and the fault is tried again.
        let logs = fleet.logs(&fleet.haproxy(1), Some(&since), 200).await;
        let refused = logs.contains("not-a-haproxy-keyword");
        if refused || attempts == 3 {
            anyhow::ensure!(refused, "HAProxy never started on the edited config");
            break (fault_at, served_after);
        }
    };
    let heal_at = fault_at + served_after;
    report!("    lb-1 served again {served_after:?} after the restart on a broken config (attempt {attempts})");
    tokio::time::sleep(SETTLE).await;
    chaos.end(stream, "lb-1 haproxy.cfg broken, HAProxy restarted".into(), fault_at, heal_at).await?;
    anyhow::ensure!(served_after <= SERVED_AGAIN_BOUND, "lb-1 was served again only after {served_after:?}");
    anyhow::ensure!(fleet.haproxy_cfg(1).await? == rendered, "lb-1 runs another config than the rendered one");
    check_routing(fleet, 1, &chaos.held, &absent).await
}

/// lb-1's agent restarted while every coordinator is down: HAProxy is left alone.
async fn restart_an_agent_without_coordinators(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let coordinators = COORDINATORS.map(|id| fleet.coordinator(id));
    let haproxy = fleet.haproxy(1);
    let stream = chaos.begin();
    tokio::time::sleep(WARM_UP).await;
    docker_each(&["stop", "-t", "5"], &coordinators).await?;
    let fault_at = Instant::now();
    // Nothing changes HAProxy from here on; what the agent was applying has landed by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (process, worker) = (fleet.process_state(&haproxy).await?, fleet.worker_pid(1).await?);
    let mut map = fleet.show_map(1).await?;
    map.sort();
    let since = docker(&["info", "-f", "{{.SystemTime}}"]).await?;
    docker(&["restart", "-t", "5", &fleet.agent(1)]).await?;
    // Long enough for reconnect attempts and a reconcile interval (10 s) of the new agent.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let logs = fleet.logs(&fleet.agent(1), Some(&since), 200).await;
        if logs.matches("coordinator stream ended").count() >= 3 && fault_at.elapsed() > Duration::from_secs(12) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the restarted agent does not try to reconnect:\n{logs}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut map_after = fleet.show_map(1).await?;
    map_after.sort();
    let (process_after, worker_after) = (fleet.process_state(&haproxy).await?, fleet.worker_pid(1).await?);
    let held: BTreeMap<String, String> =
        map.iter().map(|(fqdn, backend)| (fqdn.clone(), backend.trim_start_matches("shard-").to_owned())).collect();
    let routed = check_routing(fleet, 1, &held, &[]).await;
    docker_each(&["start"], &coordinators).await?;
    let heal_at = Instant::now();
    anyhow::ensure!(process_after == process, "lb-1's HAProxy was restarted: {process:?} -> {process_after:?}");
    anyhow::ensure!(worker_after == worker, "lb-1's HAProxy was reloaded: worker {worker} -> {worker_after}");
    anyhow::ensure!(map_after == map, "lb-1's map changed: {}", map_differences(&map, &map_after));
    routed?;
    report!("    lb-1's HAProxy kept pid {}, worker {worker} and its {} map entries", process.pid, map.len());
    stream.wait_acks(5, CONVERGE).await.context("writes after the coordinators came back")?;
    tokio::time::sleep(SETTLE).await;
    chaos.end(stream, "lb-1 agent restarted, all coordinators down".into(), fault_at, heal_at).await?;
    Ok(())
}

/// Each coordinator's own disk: stopped, its data copied out, its log read back.
async fn every_disk_holds_the_history(chaos: &mut Chaos<'_>) -> anyhow::Result<()> {
    let fleet = chaos.fleet;
    let version = chaos.cluster_view().await?.version;
    chaos.all_applied(version).await?;
    docker_each(&["stop", "-t", "10"], &COORDINATORS.map(|id| fleet.coordinator(id))).await?;
    let want: Vec<(String, String)> = chaos.held.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for id in COORDINATORS {
        let copy = fleet.dir().join(format!("node-{id}"));
        docker(&["cp", &format!("{}:/var/lib/lbfleet/sled", fleet.coordinator(id)), &copy.display().to_string()])
            .await?;
        let on_disk = state_on_disk(&copy, version).await.with_context(|| format!("reading node {id}'s data"))?;
        anyhow::ensure!(
            on_disk == chaos.held,
            "node {id}'s log up to version {version} gives another state: {}",
            map_differences(&want, &on_disk.into_iter().collect::<Vec<_>>())
        );
    }
    report!("every coordinator's own log up to version {version} holds the {} bindings checked", chaos.held.len());
    Ok(())
}

#[test]
fn the_model_allows_what_a_write_of_unknown_outcome_may_have_done() {
    let mut model = Model::new(7);
    let bind = |fqdn: &str, shard| Write::Bind { fqdn: fqdn.into(), shard };
    let unbind = |fqdn: &str| Write::Unbind { fqdn: fqdn.into() };
    model.record(&bind("a.test", "web-1"), &Outcome::Acked(3));
    model.record(&bind("b.test", "web-1"), &Outcome::Acked(4));
    model.record(&unbind("b.test"), &Outcome::Acked(5));
    model.record(&bind("c.test", "web-2"), &Outcome::NotSent("down".into()));
    model.record(&bind("a.test", "web-2"), &Outcome::Unknown("deadline".into()));
    model.record(&bind("d.test", "web-2"), &Outcome::Unknown("deadline".into()));
    let known: Vec<(&str, Held)> = model.known().collect();
    assert_eq!(known, [("b.test", None), ("c.test", None)]);
    match &model.fqdns["a.test"] {
        Expect::Unsure(allowed) => assert_eq!(allowed, &BTreeSet::from([Some("web-1"), Some("web-2")])),
        other => panic!("{other:?}"),
    }
    match &model.fqdns["d.test"] {
        Expect::Unsure(allowed) => assert_eq!(allowed, &BTreeSet::from([None, Some("web-2")])),
        other => panic!("{other:?}"),
    }
    // Only FQDNs known to be bound are unbound or moved; others are new.
    for _ in 0..200 {
        match model.next_write() {
            Write::Unbind { fqdn } => panic!("nothing is known to be bound, yet {fqdn} is unbound"),
            Write::Bind { fqdn, .. } => assert!(fqdn.starts_with('w'), "{fqdn} is not new"),
        }
    }
}

#[test]
fn an_unbind_that_was_never_written_is_not_unknown() {
    let unbind = Write::Unbind { fqdn: "a.test".into() };
    let bind = Write::Bind { fqdn: "a.test".into(), shard: "web-1" };
    let retryable = || ClientError::Status(transport::retryable_error("no Raft leader elected yet"));
    assert!(matches!(outcome_of(&unbind, retryable()), Outcome::NotSent(_)));
    assert!(matches!(outcome_of(&bind, retryable()), Outcome::Unknown(_)));
    let deadline = || ClientError::Status(tonic::Status::deadline_exceeded("did not answer"));
    assert!(matches!(outcome_of(&unbind, deadline()), Outcome::Unknown(_)));
    let out_of_time = |last| ClientError::NotAcknowledged { within: Duration::from_secs(5), last };
    assert!(matches!(outcome_of(&unbind, out_of_time(transport::retryable_error("no leader"))), Outcome::NotSent(_)));
    assert!(matches!(outcome_of(&bind, out_of_time(tonic::Status::deadline_exceeded("late"))), Outcome::Unknown(_)));
    let refused = ClientError::Status(tonic::Status::not_found("shard web-9 not found"));
    assert!(matches!(outcome_of(&bind, refused), Outcome::Refused(_)));
}

#[test]
fn writes_are_ok_again_after_the_first_interruption() {
    let at = Instant::now();
    let record = |ms: u64, acked: bool| Record {
        started: at,
        took: Duration::from_millis(ms),
        outcome: if acked { Outcome::Acked(1) } else { Outcome::Unknown("down".into()) },
    };
    let ms = Duration::from_millis;
    let stalled = [record(40, true), record(90, true), record(2_100, false), record(2_300, true), record(4_000, true)];
    assert_eq!(ok_again(&stalled, at, None), Some(ms(2_300)));
    assert_eq!(ok_again(&stalled, at, Some(at + ms(1_000))), Some(ms(2_300)), "the interruption began before");
    // An interruption that begins after the heal is the heal's, not the fault's.
    assert_eq!(ok_again(&stalled, at, Some(at + ms(60))), Some(ms(40)));
    let steady = [record(40, true), record(90, true), record(150, true)];
    assert_eq!(ok_again(&steady, at, None), Some(ms(40)));
    assert_eq!(ok_again(&[record(100, false)], at, None), None);
}
