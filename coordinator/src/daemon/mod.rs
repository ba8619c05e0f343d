//! The coordinator daemon: configuration and process lifecycle.

pub mod config;
pub mod health;
pub mod restore;
pub mod server;
