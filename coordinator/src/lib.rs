//! lbfleet's coordinator: the replicated state, its Raft storage and transport, the gRPC
//! services, and the `lbfleet` CLI's client side.
#![forbid(unsafe_code)]

pub mod api;
pub mod ctl;
pub mod daemon;
pub mod pki;
pub mod raft;
pub mod state;
