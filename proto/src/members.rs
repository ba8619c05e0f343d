//! Raft members as operators write them: `ID=HOST:PORT`, in config files and on the command line.

use std::collections::BTreeMap;

use crate::process::ConfigError;

/// Parses `ID=ADDR` items (each may itself be a comma-separated list) given for `field`.
pub fn parse_members(field: &'static str, items: &[String]) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut members = BTreeMap::new();
    for item in items.iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
        let invalid =
            |reason: &str| ConfigError::Invalid { field, value: item.to_string(), reason: reason.to_string() };
        let (id, address) = item.split_once('=').ok_or_else(|| invalid("expected ID=ADDR"))?;
        let id: u64 = id.trim().parse().map_err(|_| invalid("the ID must be a number"))?;
        check_address(field, address.trim())?;
        if members.insert(id, address.trim().to_string()).is_some() {
            return Err(invalid("the same ID is listed twice"));
        }
    }
    Ok(members)
}

/// Checks that `address` is `HOST:PORT` with a port above 0 and nothing that cannot be in an address.
pub fn check_address(field: &'static str, address: &str) -> Result<(), ConfigError> {
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok || address.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(ConfigError::Invalid { field, value: address.into(), reason: "expected HOST:PORT".into() });
    }
    Ok(())
}
