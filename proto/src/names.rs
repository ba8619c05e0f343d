//! Names that one component derives and another reads back, kept in one place so they agree.

/// What every shard's HAProxy backend name starts with.
const LB_BACKEND_PREFIX: &str = "shard-";

/// The HAProxy backend that serves `shard`: `shard-<name>`.
pub fn lb_backend(shard: &str) -> String {
    format!("{LB_BACKEND_PREFIX}{shard}")
}

/// The shard whose backend is `backend`, if the name follows [`lb_backend`]'s rule.
pub fn shard_of_lb_backend(backend: &str) -> Option<&str> {
    backend.strip_prefix(LB_BACKEND_PREFIX).filter(|shard| !shard.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_shards_map_back_and_forth() {
        assert_eq!(lb_backend("web-1"), "shard-web-1");
        assert_eq!(shard_of_lb_backend(&lb_backend("web-1")), Some("web-1"));
        assert_eq!(shard_of_lb_backend("shard-"), None);
        assert_eq!(shard_of_lb_backend("web-1"), None);
    }
}
