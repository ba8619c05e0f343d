//! Helpers shared by lbfleet's cross-process tests and benchmarks.
#![forbid(unsafe_code)]

pub mod bench;
pub mod compose_fleet;
pub mod docker_lab;
pub mod frozen;
pub mod inproc;
pub mod measure;
pub mod openmetrics;
pub mod poll;
pub mod process;
pub mod wrk;
