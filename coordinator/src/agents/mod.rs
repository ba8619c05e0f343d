//! The coordinator's side of the agent protocol: streams, desired state, soft agent status.

pub mod desired;
pub mod registry;
pub mod service;
