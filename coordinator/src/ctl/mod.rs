//! The `lbfleet` CLI, kept apart from the daemon: argument parsing, the client, output.

pub mod bindings;
pub mod cli;
pub mod client;
pub mod commands;
pub mod drain;
pub mod drain_wait;
pub mod history;
pub mod import;
pub mod lb_show;
pub mod node_output;
pub mod output;
pub mod progress;
pub mod snapshot;
pub mod status_output;
pub mod verify;
