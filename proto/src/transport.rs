//! What crosses the network between lbfleet programs, besides the messages themselves:
//! how channels are built, how large a message may be, the metadata keys that carry leader
//! redirects, retries and forwarding, and the deadlines every client enforces itself.
//!
//! `tonic::Request::set_timeout` only tells the server how long the caller will wait; a
//! frozen peer (a stopped process, a half-open connection) never reads it. Every outbound
//! call therefore runs under [`within`], which gives up on the caller's side and names the
//! endpoint that did not answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::Status;

use crate::credentials::Credentials;
use crate::pb::admin_client::AdminClient;
use crate::pb::admin_server::Admin;
use crate::pb::admin_server::AdminServer;
use crate::pb::agent_stream_client::AgentStreamClient;
use crate::pb::agent_stream_server::AgentStream;
use crate::pb::agent_stream_server::AgentStreamServer;
use crate::pb::raft_client::RaftClient;
use crate::pb::raft_server::Raft;
use crate::pb::raft_server::RaftServer;
use crate::tls_io::Connector;

/// Largest gRPC message on any lbfleet connection: bulk imports, snapshots and full states are big.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Response metadata in which a coordinator that is not the leader names the leader's address.
pub const LEADER_KEY: &str = "x-lbfleet-leader";
/// Response metadata on an error that guarantees nothing was written, so the caller may resend.
pub const RETRY_KEY: &str = "x-lbfleet-retry";
/// Request metadata on a call a follower forwarded to the leader, so it never hops twice.
pub const FORWARDED_KEY: &str = "x-lbfleet-forwarded";

/// Longest wait for a TCP connection and, separately, for its TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 PINGs go out this often on an open connection, idle or not.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A connection whose peer does not answer a PING within this is closed: the peer is frozen or gone.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid coordinator address {address:?}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// What tonic found wrong with it.
    #[source]
    pub source: tonic::transport::Error,
}

/// A lazily connecting mTLS channel to a coordinator's gRPC address (`host:port`).
///
/// Each connection it makes uses `credentials` as they are then, so renewed certificates are
/// picked up on the next reconnect. Connecting is bounded by [`CONNECT_TIMEOUT`] (TCP) and
/// again for the TLS handshake; a connection whose peer stops answering HTTP/2 PINGs is
/// dropped. Calls still need [`within`]: a peer can answer PINGs and never answer a request.
pub fn channel(address: &str, credentials: &Arc<Credentials>) -> Result<Channel, AddressError> {
    let error = |source| AddressError { address: address.to_string(), source };
    // TLS is the connector's; the URI only carries host:port.
    let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(error)?;
    Ok(endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(Connector::new(credentials.clone(), CONNECT_TIMEOUT)))
}

/// Runs one call to `endpoint`, giving up after `deadline` whatever the peer does.
///
/// A call that ran out of time may still have taken effect on the peer, so the error is
/// `DEADLINE_EXCEEDED` without the retry key.
pub async fn within<T>(
    endpoint: &str,
    deadline: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let timed_out =
        || Status::deadline_exceeded(format!("{endpoint} did not answer within {:.1}s", deadline.as_secs_f64()));
    match tokio::time::timeout(deadline, call).await {
        // tonic enforces the same deadline (the request's grpc-timeout); whichever timer fires
        // first, the caller reads one message, which does not call a slow node unreachable.
        Ok(Err(status)) if is_tonic_timeout(&status) => Err(timed_out()),
        Ok(result) => result.map_err(|status| name_endpoint(endpoint, status)),
        Err(_) => Err(timed_out()),
    }
}

/// Whether tonic gave up on the request's own `grpc-timeout`.
fn is_tonic_timeout(status: &Status) -> bool {
    use std::error::Error;
    let from_source = status.source().is_some_and(|source| source.downcast_ref::<tonic::TimeoutExpired>().is_some());
    from_source
        || (status.code() == tonic::Code::Cancelled && status.message() == tonic::TimeoutExpired(()).to_string())
}

/// Says which endpoint failed when the failure happened on our side of the connection
/// (connect, TLS, a reset): tonic's own message ("transport error") does not.
fn name_endpoint(endpoint: &str, status: Status) -> Status {
    use std::error::Error;
    if status.source().is_none() || status.message().contains(endpoint) {
        return status;
    }
    // tonic says "transport error"; the cause (a refused certificate, a reset) is at the end of the chain.
    let mut cause = status.source();
    let mut deepest = None;
    while let Some(error) = cause {
        deepest = Some(error.to_string());
        cause = error.source();
    }
    let message = match deepest {
        Some(deepest) if !status.message().contains(&deepest) => {
            format!("{endpoint} unreachable: {}: {deepest}", status.message())
        }
        _ => format!("{endpoint} unreachable: {}", status.message()),
    };
    Status::with_metadata(status.code(), message, status.metadata().clone())
}

/// A request that tells the server how long the caller waits (the caller enforces it with [`within`]).
pub fn request<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

/// The time the caller of `request` said it would wait (its `grpc-timeout`), if it said.
pub fn caller_deadline<T>(request: &tonic::Request<T>) -> Option<Duration> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(header)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// An `UNAVAILABLE` error that promises nothing was written: the caller may send it again.
pub fn retryable_error(message: impl Into<String>) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(RETRY_KEY, MetadataValue::from_static("1"));
    status
}

/// Whether `status` promises that nothing was written.
pub fn is_retryable(status: &Status) -> bool {
    status.metadata().contains_key(RETRY_KEY)
}

/// An `UNAVAILABLE` error that names the leader the caller should talk to instead.
pub fn redirect_to_leader(message: impl Into<String>, leader_address: &str) -> Status {
    let mut status = Status::unavailable(message);
    if let Ok(value) = MetadataValue::try_from(leader_address) {
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// The leader address an error names, if it names one.
pub fn leader_hint(status: &Status) -> Option<&str> {
    status.metadata().get(LEADER_KEY).and_then(|value| value.to_str().ok()).filter(|address| !address.is_empty())
}

/// Marks `request` as forwarded by a follower.
pub fn mark_forwarded<T>(request: &mut tonic::Request<T>) {
    request.metadata_mut().insert(FORWARDED_KEY, MetadataValue::from_static("1"));
}

/// Whether a follower already forwarded `request`.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_KEY)
}

/// An `Admin` client on `channel` with lbfleet's message size limit.
pub fn admin_client(channel: Channel) -> AdminClient<Channel> {
    AdminClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A `Raft` client on `channel` with lbfleet's message size limit.
pub fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An `AgentStream` client on `channel` with lbfleet's message size limit.
pub fn agent_stream_client(channel: Channel) -> AgentStreamClient<Channel> {
    AgentStreamClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `Admin` service with lbfleet's message size limit.
pub fn admin_server<T: Admin>(service: T) -> AdminServer<T> {
    AdminServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `Raft` service with lbfleet's message size limit.
pub fn raft_server<T: Raft>(service: T) -> RaftServer<T> {
    RaftServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `AgentStream` service with lbfleet's message size limit.
pub fn agent_stream_server<T: AgentStream>(service: T) -> AgentStreamServer<T> {
    AgentStreamServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn caller_deadline_reads_what_set_timeout_sent() {
        let sent = request((), Duration::from_millis(2500));
        assert_eq!(caller_deadline(&sent), Some(Duration::from_millis(2500)));
        assert_eq!(caller_deadline(&tonic::Request::new(())), None);
    }

    #[test]
    fn retry_and_leader_travel_as_metadata_not_text() {
        let retry = retryable_error("no leader yet");
        assert!(is_retryable(&retry));
        assert_eq!(retry.code(), tonic::Code::Unavailable);
        // The same words without the key promise nothing.
        assert!(!is_retryable(&Status::unavailable("no leader yet; retry")));

        let redirect = redirect_to_leader("not the leader", "10.0.0.2:7400");
        assert_eq!(leader_hint(&redirect), Some("10.0.0.2:7400"));
        assert_eq!(leader_hint(&Status::unavailable("not the leader")), None);
    }

    #[test]
    fn forwarded_mark_is_seen() {
        let mut request = tonic::Request::new(());
        assert!(!is_forwarded(&request));
        mark_forwarded(&mut request);
        assert!(is_forwarded(&request));
    }

    #[tokio::test]
    async fn within_gives_up_and_names_the_endpoint() {
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<(), Status>>();
        let error = within("10.0.0.9:7400", Duration::from_millis(100), never).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        assert!(error.message().contains("10.0.0.9:7400"), "{}", error.message());
        assert!(!is_retryable(&error));
    }

    #[tokio::test]
    async fn a_transport_error_says_its_cause() {
        #[derive(Debug)]
        struct Refused;
        impl std::fmt::Display for Refused {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("received fatal alert: CertificateRevoked")
            }
        }
        impl std::error::Error for Refused {}
        #[derive(Debug)]
        struct Transport(Refused);
        impl std::fmt::Display for Transport {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Transport {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let failed = async { Err::<(), _>(Status::from_error(Box::new(Transport(Refused)))) };
        let error = within("10.0.0.9:7400", Duration::from_secs(5), failed).await.unwrap_err();
        assert_eq!(
            error.message(),
            "10.0.0.9:7400 unreachable: transport error: received fatal alert: CertificateRevoked"
        );
    }

    #[tokio::test]
    async fn tonic_giving_up_first_reads_as_the_same_deadline() {
        let tonic_timeout = async { Err::<(), _>(Status::cancelled(tonic::TimeoutExpired(()).to_string())) };
        let error = within("10.0.0.9:7400", Duration::from_secs(5), tonic_timeout).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(error.message(), "10.0.0.9:7400 did not answer within 5.0s");
    }
}
