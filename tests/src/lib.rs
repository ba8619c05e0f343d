//! Helpers shared by lbfleet's cross-process tests and benchmarks.
#![forbid(unsafe_code)]
