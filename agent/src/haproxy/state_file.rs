//! The server state file HAProxy loads when it starts (a reload, a restart): saved from
//! `show servers state` just before, so health, drain and maint carry over.

use tracing::debug;
use tracing::warn;

use super::config::blocking;
use super::map_file::replace_file;
use super::server_state::state_file_for;
use super::server_state::StateFile;
use super::Haproxy;
use super::HaproxyError;
use super::SERVER_STATE_PATH_IN_CONTAINER;
use crate::desired::Topology;

impl Haproxy {
    /// Saves what HAProxy holds now as the state file for the config rendered from `topology`
    /// (servers removed or readdressed there are left out). When HAProxy does not answer, the
    /// file is removed instead: an old one could put back addresses that changed since.
    pub async fn save_server_state(&self, topology: &Topology) -> Result<StateFile, HaproxyError> {
        let saved = async {
            let dump = self.dump_servers_state().await?;
            let file = state_file_for(&dump, topology)?;
            self.write_server_state(file.text.clone()).await?;
            Ok::<_, HaproxyError>(file)
        }
        .await;
        match &saved {
            Ok(file) => debug!(
                container = %self.target.container,
                kept = file.kept,
                dropped = ?file.dropped,
                "server state saved for the reload"
            ),
            Err(error) => {
                warn!(%error, container = %self.target.container, "server state not saved; the reload starts without it");
                self.remove_server_state().await;
            }
        }
        saved
    }

    /// Rewrites the state file a stopped container will load, without the servers `topology`
    /// removed or readdressed since it was saved. Only possible through the shared directory.
    pub(crate) async fn refilter_server_state(&self, topology: &Topology) {
        let Some(path) = self.server_state_file() else {
            return;
        };
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                warn!(%error, path = %path.display(), "server state file unreadable; removing it");
                self.remove_server_state().await;
                return;
            }
        };
        let filtered = match state_file_for(&text, topology) {
            Ok(file) => self.write_server_state(file.text).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = filtered {
            warn!(%error, path = %path.display(), "server state file not filtered; removing it");
            self.remove_server_state().await;
        }
    }

    /// Replaces the state file atomically: through the shared config directory, else `docker exec`.
    async fn write_server_state(&self, text: String) -> Result<(), HaproxyError> {
        match self.server_state_file() {
            Some(path) => {
                let target = path.clone();
                blocking(&path, move || replace_file(&target, text.as_bytes())).await
            }
            None => {
                let docker = self.docker("writing the server state file")?;
                let container = self.target.container.as_str();
                let cmd =
                    ["sh", "-c", r#"cat > "$1.tmp" && mv -f "$1.tmp" "$1""#, "sh", SERVER_STATE_PATH_IN_CONTAINER];
                docker.exec(container, &cmd, Some(text.into_bytes())).await?.success(container, &cmd)?;
                Ok(())
            }
        }
    }

    /// Removes the state file, best effort: HAProxy starts without one (a notice only).
    async fn remove_server_state(&self) {
        self.remove_file(self.server_state_file(), SERVER_STATE_PATH_IN_CONTAINER, "server state file").await;
    }
}
