//! The `lbfleet` CLI, client side.
