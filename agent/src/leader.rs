//! Finding the coordinator leader for this host's stream: every endpoint is asked at once with
//! the hello, followers answer with the leader's address, and the stream the leader accepts is
//! kept. A dead or frozen coordinator therefore costs nothing wherever it stands in the list.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lbfleet_proto::backoff::Backoff;
use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb;
use lbfleet_proto::pb::agent_message::Kind as AgentKind;
use lbfleet_proto::transport;
use lbfleet_proto::transport::AddressError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::Streaming;
use tracing::debug;
use tracing::info;
use tracing::warn;

/// The longest a coordinator may take to accept a stream (TLS, authorization, leader check).
pub const OPEN_DEADLINE: Duration = Duration::from_secs(5);
/// Bounds of the pause before an endpoint that failed (unreachable, too slow, refused us) is asked again.
const FAILED_MIN: Duration = Duration::from_millis(100);
const FAILED_MAX: Duration = Duration::from_secs(5);
/// Bounds of the pause before a coordinator that answered "not the leader" is asked again: it is
/// alive, and during an election it knows the new leader within a second.
const ANSWERED_MIN: Duration = Duration::from_millis(100);
const ANSWERED_MAX: Duration = Duration::from_millis(500);

/// A stream a coordinator accepted.
pub struct Opened {
    /// The address it was opened on.
    pub endpoint: String,
    /// Our side of the stream; the hello is already in it.
    pub out: mpsc::Sender<pb::AgentMessage>,
    /// The coordinator's side.
    pub inbound: Streaming<pb::CoordinatorMessage>,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The endpoint is not an address tonic can dial.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The coordinator refused the stream, failed, or did not accept it within [`OPEN_DEADLINE`].
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

/// Opens this host's stream on `endpoint` and sends `hello`; gives up after [`OPEN_DEADLINE`]
/// whatever the coordinator does (a frozen one accepts TCP and never answers).
pub async fn open_stream(
    endpoint: &str,
    tls: &Arc<Credentials>,
    hello: pb::Hello,
) -> Result<(mpsc::Sender<pb::AgentMessage>, Streaming<pb::CoordinatorMessage>), OpenError> {
    let mut client = transport::agent_stream_client(transport::channel(endpoint, tls)?);
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
    // Room for 64 messages: the hello cannot block.
    out.try_send(pb::AgentMessage::from(AgentKind::Hello(hello)))
        .map_err(|_| Status::internal("stream closed before hello"))?;
    // No grpc-timeout on the request: it would bound the life of the whole stream.
    let request = tonic::Request::new(ReceiverStream::new(out_rx));
    let coordinator = format!("coordinator {endpoint}");
    let inbound = transport::within(&coordinator, OPEN_DEADLINE, client.session(request)).await?.into_inner();
    Ok((out, inbound))
}

/// One address the search asks.
struct Candidate {
    address: String,
    /// Given in `--endpoints`, as opposed to learned from a redirect.
    listed: bool,
    /// When to ask next; `None` while an attempt is under way.
    due: Option<Instant>,
    /// Its last attempt failed without an answer: a follower naming it is out of date.
    unreachable: bool,
    failed: Backoff,
    answered: Backoff,
}

impl Candidate {
    fn new(address: &str, listed: bool) -> Candidate {
        Candidate {
            address: address.to_string(),
            listed,
            due: Some(Instant::now()),
            unreachable: false,
            failed: Backoff::new(FAILED_MIN, FAILED_MAX),
            answered: Backoff::new(ANSWERED_MIN, ANSWERED_MAX),
        }
    }
}

/// Asks the coordinators for this host's stream until the leader accepts it; never gives up.
///
/// `holding` is the endpoint of a stream that is still open but silent: it is not asked, and
/// a follower naming it as the leader is no news. The search is then quiet, since finding
/// nothing is the likely outcome.
///
/// The endpoints given are taken to be distinct nodes, so at most one of them accepts. An
/// address learned from a redirect may name one of them differently, and a node that accepted
/// a host's stream twice keeps only the newer one: it is asked only while no other attempt runs.
pub async fn find(endpoints: &[String], tls: &Arc<Credentials>, hello: pb::Hello, holding: Option<&str>) -> Opened {
    let mut candidates: Vec<Candidate> = Vec::new();
    for endpoint in endpoints {
        if Some(endpoint.as_str()) != holding && !candidates.iter().any(|c| c.address == *endpoint) {
            candidates.push(Candidate::new(endpoint, true));
        }
    }
    if candidates.is_empty() {
        // Nothing to ask besides the node already held: only its own stream can tell.
        return std::future::pending().await;
    }
    let quiet = holding.is_some();
    let attempt = |address: String| {
        let hello = hello.clone();
        async move {
            let result = open_stream(&address, tls, hello).await;
            (address, result)
        }
    };
    let mut attempts = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        let learned_pending = candidates.iter().any(|c| !c.listed && c.due.is_none_or(|due| due <= now));
        let startable: Vec<&mut Candidate> = if learned_pending {
            // A learned address is asked alone: once the running attempts ended, and holding the others back.
            let first = candidates.iter_mut().find(|c| !c.listed && c.due.is_some_and(|due| due <= now));
            first.filter(|_| attempts.is_empty()).into_iter().collect()
        } else {
            candidates.iter_mut().filter(|c| c.due.is_some_and(|due| due <= now)).collect()
        };
        for candidate in startable {
            candidate.due = None;
            attempts.push(attempt(candidate.address.clone()));
        }
        let next_due = candidates.iter().filter_map(|c| c.due).min();
        tokio::select! {
            Some((address, result)) = attempts.next() => {
                // A coordinator that answered "not me" is alive and will soon know the leader: asked again sooner.
                let (leader, answered, reason) = match result {
                    Ok((out, inbound)) => return Opened { endpoint: address, out, inbound },
                    Err(OpenError::Status(status)) => {
                        let leader = transport::leader_hint(&status).map(str::to_string);
                        let answered = leader.is_some() || transport::is_retryable(&status);
                        (leader, answered, status.message().to_string())
                    }
                    Err(error) => (None, false, error.to_string()),
                };
                let now = Instant::now();
                if let Some(candidate) = candidates.iter_mut().find(|c| c.address == address) {
                    let pause = if answered { candidate.answered.next_delay() } else { candidate.failed.next_delay() };
                    candidate.due = Some(now + pause);
                    candidate.unreachable = !answered;
                }
                match leader {
                    Some(leader) => {
                        debug!(endpoint = %address, %leader, "redirected to the leader");
                        if Some(leader.as_str()) != holding {
                            match candidates.iter_mut().find(|c| c.address == leader) {
                                Some(known) => if known.due.is_some() && !known.unreachable { known.due = Some(now) },
                                None => candidates.push(Candidate::new(&leader, false)),
                            }
                        }
                    }
                    None if quiet => debug!(endpoint = %address, %reason, "no stream"),
                    None if answered => info!(endpoint = %address, %reason, "no coordinator leader yet"),
                    None => warn!(endpoint = %address, %reason, "coordinator stream ended"),
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
        }
    }
}
