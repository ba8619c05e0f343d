//! Runtime API operations on the FQDN map and on server state.

use std::collections::HashMap;
use std::time::Instant;

use tracing::debug;

use super::admin_socket::CommandAnswers;
use super::admin_socket::CommandBatch;
use super::server_state;
use super::server_state::ServerStateLine;
use super::stats;
use super::stats::FrontendStat;
use super::stats::ServerStat;
use super::Haproxy;
use super::HaproxyError;
use super::RuntimeChange;
use super::PAYLOAD_LIMIT;
use crate::desired::AdminState;
use crate::desired::MapEntries;

/// One server's admin state to set through the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminChange {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// The state to force.
    pub state: AdminState,
}

/// What `apply_runtime` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeReport {
    /// Keys added with `add map` (from `Add`, or from `Set` on a missing key).
    pub added: usize,
    /// Keys changed with `set map`.
    pub set: usize,
    /// Keys removed with `del map`.
    pub deleted: usize,
    /// `Set` changes whose key was missing and was added instead.
    pub set_missing: usize,
    /// `Del` changes whose key was already gone.
    pub already_absent: usize,
    /// Commands HAProxy refused; the other changes were applied.
    pub errors: Vec<RuntimeCommandError>,
}

/// A runtime API command HAProxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCommandError {
    /// The key the command was about.
    pub fqdn: String,
    /// `add map`, `set map` or `del map`.
    pub command: &'static str,
    /// HAProxy's answer.
    pub message: String,
}

const ENTRY_NOT_FOUND: &[u8] = b"entry not found.";
const KEY_NOT_FOUND: &[u8] = b"Key not found.";

fn answer_is(answer: &[u8], expected: &[u8]) -> bool {
    answer.trim_ascii() == expected
}

impl Haproxy {
    /// Applies map changes in one pipelined admin session; `Set` on a missing key falls back to `add map`.
    pub async fn apply_runtime(&self, changes: &[RuntimeChange]) -> Result<RuntimeReport, HaproxyError> {
        if changes.is_empty() {
            return Ok(RuntimeReport::default());
        }
        let map = self.target.map_path.as_str();
        let mut batch = CommandBatch::with_capacity(changes.len() * (map.len() + 48), changes.len());
        for change in changes {
            match change {
                RuntimeChange::Add { fqdn, backend } => batch.push(&add_map(map, fqdn, backend))?,
                RuntimeChange::Set { fqdn, backend } => batch.push(&[
                    ("verb", "set"),
                    ("verb", "map"),
                    ("map", map),
                    ("map key", fqdn),
                    ("map value", backend),
                ])?,
                RuntimeChange::Del { fqdn } => {
                    batch.push(&[("verb", "del"), ("verb", "map"), ("map", map), ("map key", fqdn)])?
                }
            }
        }
        let started = Instant::now();
        let report = self
            .timed("apply runtime map changes", async {
                let mut session = self.admin_session().await?;
                let mut report = RuntimeReport::default();
                let mut missing = Vec::new();
                {
                    let answers = session.round(&batch).await?;
                    for (i, change) in changes.iter().enumerate() {
                        let answer = answers.get(i);
                        match change {
                            RuntimeChange::Add { .. } if answer.is_empty() => report.added += 1,
                            RuntimeChange::Set { .. } if answer.is_empty() => report.set += 1,
                            RuntimeChange::Set { fqdn, backend } if answer_is(answer, ENTRY_NOT_FOUND) => {
                                missing.push((fqdn.as_str(), backend.as_str()))
                            }
                            RuntimeChange::Del { .. } if answer.is_empty() => report.deleted += 1,
                            RuntimeChange::Del { .. } if answer_is(answer, KEY_NOT_FOUND) => report.already_absent += 1,
                            other => report.errors.push(command_error(other, &answers, i)),
                        }
                    }
                }
                if !missing.is_empty() {
                    let mut adds = CommandBatch::with_capacity(missing.len() * (map.len() + 48), missing.len());
                    for (fqdn, backend) in &missing {
                        adds.push(&add_map(map, fqdn, backend))?;
                    }
                    let answers = session.round(&adds).await?;
                    for (i, (fqdn, _)) in missing.iter().enumerate() {
                        if answers.get(i).is_empty() {
                            report.added += 1;
                            report.set_missing += 1;
                        } else {
                            let message = answers.text(i);
                            report.errors.push(RuntimeCommandError {
                                fqdn: (*fqdn).to_owned(),
                                command: "add map",
                                message,
                            });
                        }
                    }
                }
                session.close().await;
                Ok(report)
            })
            .await?;
        debug!(
            container = %self.target.container,
            changes = changes.len(),
            added = report.added,
            set = report.set,
            deleted = report.deleted,
            errors = report.errors.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "runtime map changes applied"
        );
        Ok(report)
    }

    /// Replaces the whole runtime map atomically: `prepare map`, chunked `add map @ver` payloads, `commit map`.
    pub async fn replace_runtime_map(&self, map: &MapEntries) -> Result<(), HaproxyError> {
        let map_name = self.target.map_path.as_str();
        let started = Instant::now();
        self.timed("replace the runtime map", async {
            let mut session = self.admin_session().await?;
            let mut prepare = CommandBatch::with_capacity(64 + map_name.len(), 1);
            prepare.push(&[("verb", "prepare"), ("verb", "map"), ("map", map_name)])?;
            let version = {
                let answers = session.round(&prepare).await?;
                parse_version(answers.get(0)).ok_or_else(|| HaproxyError::Command {
                    command: format!("prepare map {map_name}"),
                    message: answers.text(0),
                })?
            };
            let at_version = format!("@{version}");

            let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            let mut adds = CommandBatch::with_capacity(bytes + bytes / 8, bytes / PAYLOAD_LIMIT + 1);
            let head = [("verb", "add"), ("verb", "map"), ("version", at_version.as_str()), ("map", map_name)];
            let mut open = false;
            for (key, value) in map {
                // +2 for the line's space and newline, +1 for the payload's closing empty line.
                if open && adds.current_len() + key.len() + value.len() + 3 > PAYLOAD_LIMIT {
                    adds.end_payload();
                    open = false;
                }
                if !open {
                    adds.begin_payload(&head)?;
                    open = true;
                }
                adds.payload_line(key, value)?;
            }
            if open {
                adds.end_payload();
            }
            if !adds.is_empty() {
                let answers = session.round(&adds).await?;
                if let Some(i) = (0..adds.len()).find(|&i| !answers.get(i).is_empty()) {
                    // Not committed: the live map stays as it was.
                    return Err(HaproxyError::Command {
                        command: format!("add map {at_version} {map_name} <<"),
                        message: answers.text(i),
                    });
                }
            }

            let mut commit = CommandBatch::with_capacity(64 + map_name.len(), 1);
            commit.push(&[("verb", "commit"), ("verb", "map"), ("version", at_version.as_str()), ("map", map_name)])?;
            let committed = {
                let answers = session.round(&commit).await?;
                if answers.get(0).is_empty() {
                    Ok(())
                } else {
                    Err(HaproxyError::Command {
                        command: format!("commit map {at_version} {map_name}"),
                        message: answers.text(0),
                    })
                }
            };
            session.close().await;
            committed?;
            debug!(
                container = %self.target.container,
                entries = map.len(),
                chunks = adds.len(),
                version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "runtime map replaced"
            );
            Ok(())
        })
        .await
    }

    /// Every entry of the runtime map in HAProxy's order, duplicates included.
    pub async fn show_map(&self) -> Result<Vec<(String, String)>, HaproxyError> {
        let map_name = self.target.map_path.as_str();
        self.timed("show map", async {
            let mut session = self.admin_session().await?;
            let mut batch = CommandBatch::with_capacity(16 + map_name.len(), 1);
            batch.push(&[("verb", "show"), ("verb", "map"), ("map", map_name)])?;
            let entries = {
                let answers = session.round(&batch).await?;
                parse_show_map(answers.get(0)).ok_or_else(|| HaproxyError::Command {
                    command: format!("show map {map_name}"),
                    message: answers.text(0),
                })
            };
            session.close().await;
            entries
        })
        .await
    }

    /// Health, sessions and forced admin state of every backend server: `show stat` and
    /// `show servers state` in one session.
    pub async fn show_servers(&self) -> Result<Vec<ServerStat>, HaproxyError> {
        Ok(self.show_servers_and_frontends().await?.0)
    }

    /// `show_servers`, and the frontends with their status, from the same `show stat`.
    pub async fn show_servers_and_frontends(&self) -> Result<(Vec<ServerStat>, Vec<FrontendStat>), HaproxyError> {
        let mut batch = CommandBatch::with_capacity(64, 2);
        // Types 1 (frontends) + 4 (servers).
        batch.push(&[("verb", "show"), ("verb", "stat"), ("proxy", "-1"), ("type", "5"), ("server", "-1")])?;
        batch.push(&[("verb", "show"), ("verb", "servers"), ("verb", "state")])?;
        let (stat, state) = self
            .timed("show stat and servers state", async {
                let mut session = self.admin_session().await?;
                let outputs = {
                    let answers = session.round(&batch).await?;
                    (answers.text(0), answers.text(1))
                };
                session.close().await;
                Ok(outputs)
            })
            .await?;
        let (mut servers, frontends) = stats::parse_stat_table(&stat)?;
        let admin: HashMap<(String, String), AdminState> = server_state::parse_servers_state(&state)?
            .into_iter()
            .map(|line| {
                let admin = line.forced_admin();
                ((line.backend, line.server), admin)
            })
            .collect();
        for server in &mut servers {
            if let Some(state) = admin.get(&(server.backend.clone(), server.server.clone())) {
                server.admin = *state;
            }
        }
        Ok((servers, frontends))
    }

    /// `show info`: the cheapest question HAProxy answers, for readiness.
    pub async fn show_info(&self) -> Result<String, HaproxyError> {
        self.run_command(&[("verb", "show"), ("verb", "info")]).await
    }

    /// `show servers state` as HAProxy prints it (the state file's format).
    pub async fn dump_servers_state(&self) -> Result<String, HaproxyError> {
        self.run_command(&[("verb", "show"), ("verb", "servers"), ("verb", "state")]).await
    }

    /// Every server's line of `show servers state`.
    pub async fn servers_state(&self) -> Result<Vec<ServerStateLine>, HaproxyError> {
        Ok(server_state::parse_servers_state(&self.dump_servers_state().await?)?)
    }

    /// `set server <backend>/<server> state <ready|drain|maint>` for each change, in one session;
    /// returns the changes HAProxy refused (a server it does not hold, say) with its answer.
    pub async fn set_admin_states(&self, changes: &[AdminChange]) -> Result<Vec<(AdminChange, String)>, HaproxyError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = CommandBatch::with_capacity(changes.len() * 64, changes.len());
        let targets: Vec<String> = changes.iter().map(|c| format!("{}/{}", c.backend, c.server)).collect();
        for (change, target) in changes.iter().zip(&targets) {
            batch.push(&[
                ("verb", "set"),
                ("verb", "server"),
                ("server", target),
                ("verb", "state"),
                ("state", change.state.as_str()),
            ])?;
        }
        self.timed("set server state", async {
            let mut session = self.admin_session().await?;
            let refused = {
                let answers = session.round(&batch).await?;
                changes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !answers.get(*i).trim_ascii().is_empty())
                    .map(|(i, change)| (change.clone(), answers.text(i)))
                    .collect()
            };
            session.close().await;
            Ok(refused)
        })
        .await
    }

    /// Runs one command and returns its output.
    pub(crate) async fn run_command(&self, words: &[(&'static str, &str)]) -> Result<String, HaproxyError> {
        let mut batch = CommandBatch::with_capacity(64, 1);
        batch.push(words)?;
        self.timed("runtime API command", async {
            let mut session = self.admin_session().await?;
            let output = String::from_utf8_lossy(session.round(&batch).await?.get(0)).into_owned();
            session.close().await;
            Ok(output)
        })
        .await
    }
}

fn add_map<'a>(map: &'a str, fqdn: &'a str, backend: &'a str) -> [(&'static str, &'a str); 5] {
    [("verb", "add"), ("verb", "map"), ("map", map), ("map key", fqdn), ("map value", backend)]
}

fn fqdn_of(change: &RuntimeChange) -> &str {
    match change {
        RuntimeChange::Add { fqdn, .. } | RuntimeChange::Set { fqdn, .. } | RuntimeChange::Del { fqdn } => fqdn,
    }
}

fn command_error(change: &RuntimeChange, answers: &CommandAnswers<'_>, i: usize) -> RuntimeCommandError {
    let command = match change {
        RuntimeChange::Add { .. } => "add map",
        RuntimeChange::Set { .. } => "set map",
        RuntimeChange::Del { .. } => "del map",
    };
    RuntimeCommandError { fqdn: fqdn_of(change).to_owned(), command, message: answers.text(i) }
}

/// The version in `New version created: 3`.
fn parse_version(answer: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(answer).ok()?.trim();
    text.strip_prefix("New version created:")?.trim().parse().ok()
}

/// Entries of `show map` output (`0x55d0... key value` lines); `None` when it is an error message.
fn parse_show_map(answer: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut entries = Vec::with_capacity(text.len() / 48);
    for line in text.lines().filter(|line| !line.is_empty()) {
        let (address, rest) = line.split_once(' ')?;
        if !address.starts_with("0x") {
            return None;
        }
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        entries.push((key.to_owned(), value.to_owned()));
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_map_with_duplicates() {
        let out = b"0x7f9ba46840e0 a.com shard-3\n0x7f9ba4684150 a.com shard-4\n0x1 b.com shard-1\n";
        let entries = parse_show_map(out).expect("entries");
        assert_eq!(
            entries,
            [
                ("a.com".into(), "shard-3".into()),
                ("a.com".into(), "shard-4".into()),
                ("b.com".into(), "shard-1".into())
            ]
        );
        assert_eq!(parse_show_map(b""), Some(vec![]));
        assert_eq!(parse_show_map(b"Unknown map identifier. Please use #<id> or <file>.\n"), None);
    }

    #[test]
    fn parses_the_prepared_version() {
        assert_eq!(parse_version(b"New version created: 12\n"), Some(12));
        assert_eq!(parse_version(b"Unknown map identifier.\n"), None);
    }
}
