//! Calls a follower sends on to the leader: one cached channel per leader address, and a
//! deadline the follower enforces itself, so a frozen leader fails the call instead of hanging it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use lbfleet_proto::credentials::Credentials;
use lbfleet_proto::pb::admin_client::AdminClient;
use lbfleet_proto::transport;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;

/// How long a forwarded call may take when its caller did not say (no `grpc-timeout`).
pub const DEFAULT_FORWARD_DEADLINE: Duration = Duration::from_secs(10);

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
    /// instead of forwarding it again.
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
        let deadline = transport::caller_deadline(&request).unwrap_or(DEFAULT_FORWARD_DEADLINE);
        let mut forwarded = transport::request(request.into_inner(), deadline);
        transport::mark_forwarded(&mut forwarded);
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
