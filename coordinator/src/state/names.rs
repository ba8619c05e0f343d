//! Validation of the names and addresses that end up in `haproxy.cfg` and Docker calls.
//!
//! Everything here is checked again inside `apply`, so nothing that reached the log
//! can break the rendered configuration or inject a line into it.

use super::StateError;

/// Checks an object name (cluster, host, shard, node): 1-63 of `[a-z0-9._-]`, starting alphanumeric.
pub fn object_name(field: &str, value: &str) -> Result<(), StateError> {
    check_chars(field, value, 63, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Checks a Docker container name: 1-128 of `[a-zA-Z0-9._-]`, starting alphanumeric.
pub fn container_name(field: &str, value: &str) -> Result<(), StateError> {
    check_chars(field, value, 128, |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a `host:port` server address; the host is a DNS name or an IPv4 address (IPv6 in brackets).
pub fn server_address(field: &str, value: &str) -> Result<(), StateError> {
    let invalid = |reason: &str| StateError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(|| invalid("expected HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| invalid("the port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("the port must be a number from 1 to 65535"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| invalid("not an IPv6 address in brackets"));
    }
    if host.is_empty() || host.len() > 253 {
        return Err(invalid("the host part must be 1 to 253 characters"));
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return Err(invalid("the host part may only hold letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn check_chars(field: &str, value: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), StateError> {
    let invalid = |reason: String| StateError::Invalid { field: field.to_string(), value: value.to_string(), reason };
    if value.is_empty() || value.len() > max {
        return Err(invalid(format!("must be 1 to {max} characters")));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(invalid(format!("character {bad:?} is not allowed")));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or digit".to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        assert!(object_name("shard", "web-1").is_ok());
        assert!(object_name("shard", "Web").is_err());
        assert!(object_name("shard", "-web").is_err());
        assert!(object_name("shard", "web 1").is_err());
        assert!(object_name("shard", "web\nbackend x").is_err());
        assert!(object_name("shard", "").is_err());
        assert!(object_name("shard", &"a".repeat(64)).is_err());
    }

    #[test]
    fn addresses() {
        assert!(server_address("address", "node-0:80").is_ok());
        assert!(server_address("address", "10.0.0.5:8080").is_ok());
        assert!(server_address("address", "[::1]:80").is_ok());
        assert!(server_address("address", "node-0").is_err());
        assert!(server_address("address", "node-0:0").is_err());
        assert!(server_address("address", "node-0:70000").is_err());
        assert!(server_address("address", "node 0:80").is_err());
        assert!(server_address("address", "n\ncheck:80").is_err());
    }

    #[test]
    fn containers() {
        assert!(container_name("container", "Hosting_HAProxy.1").is_ok());
        assert!(container_name("container", "a/b").is_err());
    }
}
