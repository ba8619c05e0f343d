//! Channels from a follower to the leader, reused across forwarded requests.

use std::collections::HashMap;
use std::sync::Mutex;

use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::Status;

use crate::raft::network::channel;

/// Caches one mTLS channel per leader address, authenticated as this coordinator.
pub struct Forwarder {
    tls: ClientTlsConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    /// Channels will present `tls`'s coordinator certificate.
    pub fn new(tls: ClientTlsConfig) -> Forwarder {
        Forwarder { tls, channels: Mutex::new(HashMap::new()) }
    }

    /// The channel to `address`, created on first use.
    pub fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let created = channel(address, &self.tls)
            .map_err(|e| Status::unavailable(format!("cannot reach leader at {address}: {e}")))?;
        channels.insert(address.to_string(), created.clone());
        Ok(created)
    }
}
