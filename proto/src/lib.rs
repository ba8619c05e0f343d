//! The contract shared by every lbfleet component: the gRPC services and the small
//! domain types both ends need (FQDNs, names, certificate identities, TLS loading).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod digest;
pub mod fqdn;
pub mod identity;
pub mod map_diff;
pub mod members;
pub mod process;
pub mod tls;
pub mod transport;

pub use digest::MapDigest;
pub use fqdn::Fqdn;
pub use fqdn::FqdnError;
pub use identity::Identity;
pub use identity::Role;

/// Generated protobuf messages and tonic clients/servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("lbfleet.v1");
}
