//! lbfleet's per-host agent: one mTLS stream to the coordinator, and the drivers that apply
//! this host's assigned state to the local HAProxy container.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(unused_crate_dependencies))]

pub mod admin;
pub mod applier;
pub mod config;
pub mod desired;
pub mod docker;
pub mod haproxy;
pub mod leader;
pub mod metrics;
pub mod observers;
pub mod probe;
pub mod ready;
pub mod reload;
pub mod session;
