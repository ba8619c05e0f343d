//! `show servers state`: each server's forced admin state, and the state file HAProxy loads
//! at a reload (`server-state-file`, `load-server-state-from-file global`) so health, drain and
//! maint carry over it.
//!
//! Format of HAProxy 3.0, checked against a container: a version line `1`, a header line
//! `# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...`, then one line
//! per server, fields separated by one space, `-` for an empty one.

use std::collections::HashMap;

use crate::desired::AdminState;
use crate::desired::Topology;

/// `srv_admin_state` bit: maintenance forced through the runtime API.
const ADMIN_FORCED_MAINT: u32 = 0x01;
/// `srv_admin_state` bit: drain forced through the runtime API.
const ADMIN_FORCED_DRAIN: u32 = 0x08;

/// One server's line of `show servers state`, the fields the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStateLine {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// The IP address HAProxy uses now (`-` when none).
    pub addr: String,
    /// The port HAProxy uses now.
    pub port: String,
    /// The host name the server was configured with (`-` for an IP address).
    pub fqdn: String,
    /// `srv_admin_state` bits.
    pub admin_bits: u32,
}

impl ServerStateLine {
    /// The admin state forced at run time; maint set by the config, a resolver or an inherited
    /// state is not ours and reads as ready.
    pub fn forced_admin(&self) -> AdminState {
        if self.admin_bits & ADMIN_FORCED_MAINT != 0 {
            AdminState::Maint
        } else if self.admin_bits & ADMIN_FORCED_DRAIN != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        }
    }
}

/// Why `show servers state` output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerStateError {
    /// No `# be_id ...` header: HAProxy answered with a message instead.
    #[error("not a server state dump: {output}")]
    NotADump {
        /// The start of what HAProxy answered.
        output: String,
    },
    /// The header lacks a column the agent needs.
    #[error("no {column} column")]
    MissingColumn {
        /// The missing column's name.
        column: &'static str,
    },
}

/// Characters of a non-dump answer quoted in `ServerStateError::NotADump`.
const QUOTED_OUTPUT: usize = 200;

/// Column positions of the fields the agent reads.
struct Columns {
    backend: usize,
    server: usize,
    addr: usize,
    admin: usize,
    port: usize,
    fqdn: usize,
}

impl Columns {
    fn of(header: &str) -> Result<Columns, ServerStateError> {
        let names: Vec<&str> = header.split_ascii_whitespace().collect();
        let column = |name: &'static str| {
            names.iter().position(|c| *c == name).ok_or(ServerStateError::MissingColumn { column: name })
        };
        Ok(Columns {
            backend: column("be_name")?,
            server: column("srv_name")?,
            addr: column("srv_addr")?,
            admin: column("srv_admin_state")?,
            port: column("srv_port")?,
            fqdn: column("srv_fqdn")?,
        })
    }

    fn line(&self, line: &str) -> Option<ServerStateLine> {
        let fields: Vec<&str> = line.split(' ').collect();
        let field = |i: usize| fields.get(i).map(|f| f.to_string());
        Some(ServerStateLine {
            backend: field(self.backend)?,
            server: field(self.server)?,
            addr: field(self.addr)?,
            port: field(self.port)?,
            fqdn: field(self.fqdn)?,
            admin_bits: fields.get(self.admin)?.parse().ok()?,
        })
    }
}

/// The header line (without `# `) and the server lines of a dump.
fn split_dump(output: &str) -> Result<(&str, impl Iterator<Item = &str>), ServerStateError> {
    let mut lines = output.lines();
    // The version line comes first; the header follows it.
    let header =
        lines.by_ref().take(2).find_map(|line| line.strip_prefix("# ")).ok_or_else(|| ServerStateError::NotADump {
            output: output.trim().chars().take(QUOTED_OUTPUT).collect(),
        })?;
    Ok((header, lines.filter(|line| !line.trim().is_empty() && !line.starts_with('#'))))
}

/// Parses `show servers state` output, skipping lines it cannot read.
pub fn parse_servers_state(output: &str) -> Result<Vec<ServerStateLine>, ServerStateError> {
    let (header, lines) = split_dump(output)?;
    let columns = Columns::of(header)?;
    Ok(lines.filter_map(|line| columns.line(line)).collect())
}

/// The state file to load at the reload into `topology`: the dump minus every server that is
/// not in `topology` or whose address there differs from the one HAProxy holds. With
/// `init-addr last` HAProxy would take the old address from the file over the new config.
pub fn state_file_for(output: &str, topology: &Topology) -> Result<StateFile, ServerStateError> {
    let (header, lines) = split_dump(output)?;
    let columns = Columns::of(header)?;
    let addresses: HashMap<(&str, &str), &str> = topology
        .backends
        .iter()
        .flat_map(|b| b.servers.iter().map(move |s| ((b.name.as_str(), s.name.as_str()), s.address.as_str())))
        .collect();
    let mut file = StateFile { text: format!("1\n# {header}\n"), kept: 0, dropped: Vec::new() };
    for line in lines {
        let Some(state) = columns.line(line) else { continue };
        let configured = addresses.get(&(state.backend.as_str(), state.server.as_str()));
        if configured.is_some_and(|address| holds_address(&state, address)) {
            file.text.push_str(line);
            file.text.push('\n');
            file.kept += 1;
        } else {
            file.dropped.push(format!("{}/{}", state.backend, state.server));
        }
    }
    Ok(file)
}

/// A server state file ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    /// The file's contents.
    pub text: String,
    /// Servers whose state carries over.
    pub kept: usize,
    /// `backend/server` of the servers left out (removed, or their address changed).
    pub dropped: Vec<String>,
}

/// Whether HAProxy's state for a server matches `address` (`host:port`, `ip:port`, `[ip6]:port`)
/// from the config.
fn holds_address(state: &ServerStateLine, address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if port != state.port {
        return false;
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        state.fqdn == "-" && host == state.addr
    } else {
        host == state.fqdn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::Backend;
    use crate::desired::Server;

    const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight \
        srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state \
        srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port \
        srv_check_addr srv_agent_addr srv_agent_port";

    fn line(backend: &str, server: &str, addr: &str, admin: u32, fqdn: &str, port: u16) -> String {
        format!("3 {backend} 1 {server} {addr} 2 {admin} 1 1 30 15 3 4 6 0 0 1 {fqdn} {port} - 0 0 - - 0")
    }

    fn dump(lines: &[String]) -> String {
        format!("1\n{HEADER}\n{}\n", lines.join("\n"))
    }

    fn server(name: &str, address: &str) -> Server {
        Server { name: name.into(), address: address.into(), id: 0, admin: AdminState::Ready }
    }

    #[test]
    fn reads_the_forced_admin_state_and_ignores_the_others() {
        let output = dump(&[
            line("shard-a", "n0", "10.0.0.2", 0, "n0", 80),
            line("shard-a", "n1", "10.0.0.3", 0x01, "n1", 80),
            line("shard-a", "n2", "10.0.0.4", 0x08, "n2", 80),
            // Forced maint wins over drain; resolver (0x20) and config (0x04) maint are not ours.
            line("shard-a", "n3", "10.0.0.5", 0x09, "n3", 80),
            line("shard-a", "n4", "-", 0x20, "n4", 80),
            line("shard-a", "n5", "10.0.0.6", 0x04, "-", 80),
        ]);
        let states = parse_servers_state(&output).unwrap();
        let admin: Vec<AdminState> = states.iter().map(ServerStateLine::forced_admin).collect();
        use AdminState::*;
        assert_eq!(admin, [Ready, Maint, Drain, Maint, Ready, Ready]);
        assert_eq!((states[1].backend.as_str(), states[1].server.as_str()), ("shard-a", "n1"));
        assert_eq!(
            (states[0].addr.as_str(), states[0].port.as_str(), states[0].fqdn.as_str()),
            ("10.0.0.2", "80", "n0")
        );
    }

    #[test]
    fn an_error_message_is_not_a_dump() {
        assert_eq!(
            parse_servers_state("Can't find backend.\n"),
            Err(ServerStateError::NotADump { output: "Can't find backend.".into() })
        );
        assert_eq!(
            parse_servers_state("1\n# be_id be_name\n"),
            Err(ServerStateError::MissingColumn { column: "srv_name" })
        );
        assert_eq!(parse_servers_state(&format!("1\n{HEADER}\n")).unwrap(), vec![]);
    }

    #[test]
    fn the_state_file_drops_removed_servers_and_changed_addresses() {
        let output = dump(&[
            line("shard-a", "same-name", "172.18.0.5", 1, "node-0", 80),
            line("shard-a", "same-ip", "10.0.0.7", 0, "-", 8080),
            line("shard-a", "moved-name", "172.18.0.6", 0, "node-1", 80),
            line("shard-a", "moved-ip", "10.0.0.8", 0, "-", 80),
            line("shard-a", "new-port", "10.0.0.9", 0, "-", 80),
            line("shard-a", "removed", "10.0.0.10", 0, "-", 80),
            line("shard-gone", "n", "10.0.0.11", 0, "-", 80),
            line("shard-b", "v6", "::1", 8, "-", 80),
        ]);
        let topology = Topology {
            map_path: "/m".into(),
            backends: vec![
                Backend {
                    name: "shard-a".into(),
                    servers: vec![
                        server("same-name", "node-0:80"),
                        server("same-ip", "10.0.0.7:8080"),
                        server("moved-name", "node-9:80"),
                        server("moved-ip", "10.0.0.99:80"),
                        server("new-port", "10.0.0.9:81"),
                    ],
                },
                Backend { name: "shard-b".into(), servers: vec![server("v6", "[::1]:80")] },
            ],
        };
        let file = state_file_for(&output, &topology).unwrap();
        assert_eq!(file.kept, 3);
        assert_eq!(
            file.dropped,
            ["shard-a/moved-name", "shard-a/moved-ip", "shard-a/new-port", "shard-a/removed", "shard-gone/n"]
        );
        let expected = dump(&[
            line("shard-a", "same-name", "172.18.0.5", 1, "node-0", 80),
            line("shard-a", "same-ip", "10.0.0.7", 0, "-", 8080),
            line("shard-b", "v6", "::1", 8, "-", 80),
        ]);
        assert_eq!(file.text, expected);
    }
}
