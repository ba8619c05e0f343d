//! Backend server health from `show stat` (CSV, one header line starting with `# `).

use crate::desired::AdminState;

/// Health of one backend server as HAProxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// Backend (proxy) name, e.g. `shard-web-1`.
    pub backend: String,
    /// Server name, e.g. `web-1-node-0`.
    pub server: String,
    /// `UP`, `DOWN`, `MAINT`, `no check`, or transitional states like `UP 1/3`.
    pub status: String,
    /// Description of the last check, e.g. `Layer4 connection problem`.
    pub check: String,
    /// Current sessions on the server (`scur`).
    pub sessions: u64,
    /// The admin state forced at run time (from `show servers state`; ready when unknown).
    pub admin: AdminState,
}

impl ServerStat {
    /// Whether the server takes traffic (`UP`, including `UP` while going down, or `no check`).
    pub fn is_up(&self) -> bool {
        self.status.starts_with("UP") || self.status == "no check"
    }
}

/// One frontend as HAProxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendStat {
    /// Frontend (proxy) name, e.g. `http`.
    pub name: String,
    /// `OPEN` while it listens; `STOP` or `FULL` otherwise.
    pub status: String,
}

/// Why `show stat` output could not be read as a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShowStatError {
    /// The output has no `# ` header line: HAProxy answered with a message instead.
    #[error("not a stats table: {output}")]
    NotATable {
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

/// Characters of a non-table answer quoted in `ShowStatError::NotATable`.
const QUOTED_OUTPUT: usize = 200;

/// Parses `show stat` output into its server rows and its frontend rows.
pub(crate) fn parse_stat_table(output: &str) -> Result<(Vec<ServerStat>, Vec<FrontendStat>), ShowStatError> {
    let mut lines = output.lines();
    let header = lines
        .next()
        .and_then(|line| line.strip_prefix("# "))
        .ok_or_else(|| ShowStatError::NotATable { output: output.trim().chars().take(QUOTED_OUTPUT).collect() })?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &'static str| {
        columns.iter().position(|c| *c == name).ok_or(ShowStatError::MissingColumn { column: name })
    };
    let (pxname, svname, status) = (column("pxname")?, column("svname")?, column("status")?);
    let check_desc = column("check_desc").ok();
    let scur = column("scur")?;

    let mut servers = Vec::new();
    let mut frontends = Vec::new();
    let mut fields = Vec::with_capacity(columns.len());
    for line in lines.filter(|line| !line.is_empty()) {
        split_csv(line, &mut fields);
        let field = |i: Option<usize>| i.and_then(|i| fields.get(i)).cloned().unwrap_or_default();
        let server = field(Some(svname));
        if server == "FRONTEND" {
            frontends.push(FrontendStat { name: field(Some(pxname)), status: field(Some(status)) });
            continue;
        }
        if server == "BACKEND" {
            continue;
        }
        servers.push(ServerStat {
            backend: field(Some(pxname)),
            server,
            status: field(Some(status)),
            check: field(check_desc),
            sessions: field(Some(scur)).parse().unwrap_or(0),
            admin: AdminState::Ready,
        });
    }
    Ok((servers, frontends))
}

/// Splits one CSV line; HAProxy quotes fields holding commas or quotes and doubles inner quotes.
fn split_csv(line: &str, out: &mut Vec<String>) {
    out.clear();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    out.push(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_server_rows_with_status_and_check() {
        let output = "# pxname,svname,scur,status,check_status,check_desc,\n\
            shard-web-1,web-1-node-0,3,UP,L4OK,\"Layer4 check passed, fine\",\n\
            shard-web-1,BACKEND,3,UP,,,\n\
            shard-web-2,web-2-node-0,0,DOWN,L4CON,Connection refused,\n";
        let (servers, _) = parse_stat_table(output).expect("parsed");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].backend, "shard-web-1");
        assert_eq!(servers[0].check, "Layer4 check passed, fine");
        assert_eq!((servers[0].sessions, servers[1].sessions), (3, 0));
        assert!(servers[0].is_up());
        assert_eq!(servers[1].status, "DOWN");
        assert!(!servers[1].is_up());
    }

    #[test]
    fn frontend_rows_are_kept_apart() {
        let output = "# pxname,svname,scur,status,\nhttp,FRONTEND,1,OPEN,\nstats,FRONTEND,0,STOP,\nshard-a,n0,0,UP,\n";
        let (servers, frontends) = parse_stat_table(output).expect("parsed");
        assert_eq!(servers.len(), 1);
        assert_eq!(
            frontends,
            [
                FrontendStat { name: "http".into(), status: "OPEN".into() },
                FrontendStat { name: "stats".into(), status: "STOP".into() }
            ]
        );
    }

    #[test]
    fn an_error_message_is_not_a_table() {
        assert_eq!(
            parse_stat_table("Permission denied\n"),
            Err(ShowStatError::NotATable { output: "Permission denied".into() })
        );
        assert_eq!(parse_stat_table("# pxname,scur,status\n"), Err(ShowStatError::MissingColumn { column: "svname" }));
    }
}
