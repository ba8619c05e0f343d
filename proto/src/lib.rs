//! The contract shared by every lbfleet component: the gRPC services and the small
//! domain types both ends need (FQDNs, names, certificate identities, TLS loading).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

pub mod admin_state;
pub mod backoff;
pub mod credentials;
pub mod digest;
pub mod fqdn;
pub mod identity;
pub mod map_diff;
pub mod members;
pub mod names;
pub mod ops_http;
mod pb_impl;
pub mod process;
pub mod systemd;
pub mod tls;
pub mod tls_io;
pub mod transport;

pub use admin_state::admin_word;
pub use admin_state::AdminState;
pub use digest::MapDigest;
pub use fqdn::Fqdn;
pub use fqdn::FqdnError;
pub use identity::Identity;
pub use identity::Role;

/// Generated protobuf messages and tonic clients/servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("lbfleet.v1");

    /// The encoded descriptors of `lbfleet.proto`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lbfleet_descriptor");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::pb;

    #[test]
    fn messages_serialize_under_their_protobuf_names() {
        let create = pb::CreateCluster { name: "eu".into(), haproxy_container: String::new() };
        let command: pb::Command = pb::command::Kind::CreateCluster(create).into();
        let expected = json!({"kind": {"create_cluster": {"name": "eu", "haproxy_container": ""}}});
        assert_eq!(serde_json::to_value(command).unwrap(), expected);
        let hello = pb::Hello { host_id: "lb-a".into(), map_digest: u64::MAX, ..Default::default() };
        assert_eq!(serde_json::to_value(hello).unwrap()["map_digest"], "ffffffffffffffff");
    }
}
