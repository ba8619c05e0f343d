//! The coordinator's gRPC services for operators.

pub mod admin;
pub mod bindings_stream;
pub mod convert;
pub mod forward;
pub mod group_commit;
pub mod history;
pub mod lb_state;
pub mod node_sessions;
pub mod snapshot;
