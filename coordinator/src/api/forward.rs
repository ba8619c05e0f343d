//! Calls a follower sends on to the leader: one cached channel per leader address, and a
//! deadline the follower enforces itself, so a frozen leader fails the call instead of hanging it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::identity::authorize;
use lbfleet_proto::pb::admin_client::AdminClient;
use lbfleet_proto::transport;
use lbfleet_proto::Identity;
use lbfleet_proto::Role;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;

/// How long a forwarded call may take when its caller did not say (no `grpc-timeout`).
pub const DEFAULT_FORWARD_DEADLINE: Duration = Duration::from_secs(10);

/// Request metadata naming the caller a coordinator forwards for, e.g. `admin:alice`.
pub const ON_BEHALF_OF_KEY: &str = "x-lbfleet-on-behalf-of";

/// Who a request acts for: its certificate's identity, or the identity a coordinator asserts
/// for the caller it forwards for. Anyone else asserting an identity is refused.
#[allow(clippy::result_large_err)]
pub fn caller_identity<T>(request: &Request<T>, allowed: &[Role]) -> Result<Identity, Status> {
    let peer = authorize(request, allowed)?;
    let asserted = match request.metadata().get(ON_BEHALF_OF_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            Status::invalid_argument(format!("{ON_BEHALF_OF_KEY} must be an identity such as admin:alice"))
        })?),
    };
    acting_identity(peer, asserted, allowed)
}

/// The rule of [`caller_identity`], apart from the certificate and metadata it reads.
#[allow(clippy::result_large_err)]
pub fn acting_identity(peer: Identity, asserted: Option<&str>, allowed: &[Role]) -> Result<Identity, Status> {
    let Some(asserted) = asserted else { return Ok(peer) };
    if peer.role != Role::Coordinator {
        return Err(Status::permission_denied(format!(
            "{peer} may not act as {asserted:?}: only a coordinator's certificate may assert another identity"
        )));
    }
    let identity = Identity::parse(asserted)
        .map_err(|error| Status::invalid_argument(format!("{peer} asserted an invalid identity: {error}")))?;
    if !allowed.contains(&identity.role) {
        return Err(Status::permission_denied(format!(
            "{peer} forwarded a call of {identity}, whose role may not make it"
        )));
    }
    Ok(identity)
}

/// Caches one mTLS channel per leader address, authenticated as this coordinator.
pub struct Forwarder {
    credentials: Arc<Credentials>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// Channels will present this coordinator's certificate, as renewed.
    pub fn new(credentials: Arc<Credentials>) -> Forwarder {
        Forwarder { credentials, channels: Mutex::new(HashMap::new()) }
    }

    /// Sends `request` to the leader at `address` with `call`, within the deadline its caller gave.
    ///
    /// The forwarded request is marked, so a node that lost leadership meanwhile refuses it
    /// instead of forwarding it again, and names the caller it acts for, so the leader records
    /// that caller rather than this coordinator.
    pub async fn forward<Req, Reply, Call, Fut>(
        &self,
        address: &str,
        request: Request<Req>,
        call: Call,
    ) -> Result<Response<Reply>, Status>
    where
        Call: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Reply>, Status>>,
    {
        // A call made inside this process (no client certificate) goes on as this coordinator's.
        let caller = match request.peer_certs() {
            Some(_) => Some(caller_identity(&request, &Role::ALL)?),
            None => None,
        };
        let deadline = transport::caller_deadline(&request).unwrap_or(DEFAULT_FORWARD_DEADLINE);
        let mut forwarded = transport::request(request.into_inner(), deadline);
        transport::mark_forwarded(&mut forwarded);
        if let Some(caller) = caller {
            // Identities are `[a-z0-9._-]` and one colon, always valid metadata.
            let value = MetadataValue::try_from(caller.to_string())
                .map_err(|_| Status::internal(format!("identity {caller} is not valid metadata")))?;
            forwarded.metadata_mut().insert(ON_BEHALF_OF_KEY, value);
        }
        let client = transport::admin_client(self.channel(address)?);
        transport::within(&format!("the leader at {address}"), deadline, call(client, forwarded)).await
    }

    /// The channel to `address`, created on first use.
    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let created = transport::channel(address, &self.credentials)
            .map_err(|error| Status::unavailable(format!("cannot reach the leader: {error}")))?;
        channels.insert(address.to_string(), created.clone());
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATORS: &[Role] = &[Role::Admin, Role::Coordinator];

    fn id(text: &str) -> Identity {
        Identity::parse(text).unwrap()
    }

    #[test]
    fn a_caller_without_an_assertion_is_its_certificate() {
        assert_eq!(acting_identity(id("admin:alice"), None, OPERATORS).unwrap(), id("admin:alice"));
        assert_eq!(acting_identity(id("coordinator:2"), None, OPERATORS).unwrap(), id("coordinator:2"));
    }

    #[test]
    fn a_coordinator_may_assert_the_caller_it_forwards_for() {
        let acting = acting_identity(id("coordinator:2"), Some("admin:bob"), OPERATORS).unwrap();
        assert_eq!(acting, id("admin:bob"));
    }

    #[test]
    fn only_a_coordinator_may_assert_an_identity() {
        for peer in ["admin:bob", "agent:lb-1"] {
            let status = acting_identity(id(peer), Some("admin:alice"), OPERATORS).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{peer}");
            assert_eq!(
                status.message(),
                format!("{peer} may not act as \"admin:alice\": only a coordinator's certificate may assert another identity")
            );
        }
        // Not even its own identity: an assertion is a coordinator's alone.
        let status = acting_identity(id("admin:bob"), Some("admin:bob"), OPERATORS).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn an_asserted_identity_must_be_valid_and_allowed() {
        let status = acting_identity(id("coordinator:2"), Some("root"), OPERATORS).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = acting_identity(id("coordinator:2"), Some("agent:lb-1"), OPERATORS).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
    }
}
