//! lbfleet's coordinator: the replicated state, its Raft storage and transport, the gRPC
//! services, and the `lbfleet` CLI's client side.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(unused_crate_dependencies))]
// tonic::Status is the error of every gRPC handler and helper; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod agents;
pub mod api;
pub mod ctl;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod pki;
pub mod raft;
pub mod snapshot_file;
pub mod state;
pub mod when;
