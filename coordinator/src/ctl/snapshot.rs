//! `lbfleet snapshot save` and `snapshot verify`: the replicated state into a file, written
//! atomically and checked on the way in; and the check of such a file.

use std::fmt::Display;
use std::fs::File;
use std::io::BufWriter;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use lbfleet_proto::backoff::Backoff;
use lbfleet_proto::pb;
use lbfleet_proto::transport;
use tonic::Status;
use tonic::Streaming;

use super::client::Client;
use super::client::ClientError;
use crate::snapshot_file;
use crate::snapshot_file::SnapshotHeader;
use crate::snapshot_file::Verifier;

/// Bounds of the pause before asking again when the group has no leader yet.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A snapshot file that was written, or checked.
#[derive(Debug)]
pub struct SnapshotReport {
    pub file: PathBuf,
    pub header: SnapshotHeader,
    /// The file's size.
    pub bytes: u64,
    /// How long saving took (`None` for a check).
    pub elapsed: Option<Duration>,
}

/// Asks the group for a snapshot and writes it to `file`: into a temporary file beside it,
/// verified (length and checksum) as it arrives, synced, then renamed over `file`. An existing
/// `file` is replaced only with `force`. `timeout` bounds the leader's first answer and then
/// each chunk, so a node that dies or freezes mid-stream fails the save in time. A failed or
/// interrupted (SIGINT, SIGTERM) save removes its temporary file and leaves `file` as it was.
pub async fn save(client: &Client, file: &Path, force: bool, timeout: Duration) -> anyhow::Result<SnapshotReport> {
    let started = Instant::now();
    refuse_existing(file, force)?;
    let mut temp = TempFile::beside(file)?;
    let (header, received) = tokio::select! {
        received = receive(client, &mut temp, timeout) => received?,
        () = lbfleet_proto::process::shutdown_signal() => anyhow::bail!("interrupted; {} was not written", file.display()),
    };
    refuse_existing(file, force)?;
    temp.commit()?;
    Ok(SnapshotReport { file: file.into(), header, bytes: received, elapsed: Some(started.elapsed()) })
}

/// Streams the snapshot into `temp`, checking it on the way; its header and size.
async fn receive(client: &Client, temp: &mut TempFile, timeout: Duration) -> anyhow::Result<(SnapshotHeader, u64)> {
    let endpoint = format!("coordinator {}", client.endpoint());
    let mut stream = open(client, &endpoint, timeout).await?;
    let mut verifier = Verifier::new();
    while let Some(chunk) = transport::within(&endpoint, timeout, stream.message()).await.map_err(ClientError::from)? {
        verifier.update(&chunk.data).map_err(because(format!("the snapshot {endpoint} sent")))?;
        temp.write(&chunk.data)?;
    }
    let received = verifier.received();
    let header = verifier.finish().map_err(because(format!("the snapshot stream from {endpoint} ended")))?;
    Ok((header, received))
}

/// Opens the snapshot stream; while the group answers that it has no leader, asks again
/// until `timeout`.
async fn open(client: &Client, endpoint: &str, timeout: Duration) -> anyhow::Result<Streaming<pb::SnapshotChunk>> {
    let mut admin = transport::admin_client(transport::channel(&client.endpoint(), client.tls())?);
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let request = transport::request(pb::SnapshotRequest {}, left);
        let status: Status = match transport::within(endpoint, left, admin.snapshot(request)).await {
            Ok(stream) => return Ok(stream.into_inner()),
            Err(status) if transport::is_retryable(&status) => status,
            Err(status) => return Err(ClientError::from(status).into()),
        };
        let pause = backoff.next_delay();
        if Instant::now() + pause >= deadline {
            return Err(ClientError::from(status).into());
        }
        tokio::time::sleep(pause).await;
    }
}

/// Checks the snapshot file `file` entirely: layout, checksum, and that its state decodes.
pub fn verify(file: &Path) -> anyhow::Result<SnapshotReport> {
    let bytes = std::fs::read(file).map_err(because(format!("cannot read {}", file.display())))?;
    let snapshot = snapshot_file::decode(&bytes).map_err(because(file.display()))?;
    Ok(SnapshotReport { file: file.into(), header: snapshot.header, bytes: bytes.len() as u64, elapsed: None })
}

fn refuse_existing(file: &Path, force: bool) -> anyhow::Result<()> {
    if !force && file.symlink_metadata().is_ok() {
        anyhow::bail!("{} exists; give --force to replace it", file.display());
    }
    Ok(())
}

/// A file written beside its final name and renamed into place once whole; removed if dropped before.
struct TempFile {
    path: PathBuf,
    target: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl TempFile {
    fn beside(target: &Path) -> anyhow::Result<TempFile> {
        let name = target
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("{} does not name a file", target.display()))?
            .to_string_lossy();
        let path = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(because(format!("cannot create {}", path.display())))?;
        Ok(TempFile { path, target: target.into(), writer: Some(BufWriter::with_capacity(1 << 20, file)) })
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let writer = self.writer.as_mut().ok_or_else(|| anyhow::anyhow!("{} is closed", self.path.display()))?;
        writer.write_all(data).map_err(because(format!("cannot write {}", self.path.display())))
    }

    /// Syncs the file, renames it to its target and syncs the directory, so the target is
    /// either the old file or the whole new one, after a crash too.
    fn commit(mut self) -> anyhow::Result<()> {
        let committed = self.rename();
        if committed.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        committed
    }

    fn rename(&mut self) -> anyhow::Result<()> {
        let writer = self.writer.take().ok_or_else(|| anyhow::anyhow!("{} is closed", self.path.display()))?;
        let synced = writer.into_inner().map_err(|e| e.into_error()).and_then(|file| file.sync_all());
        synced.map_err(because(format!("cannot write {}", self.path.display())))?;
        std::fs::rename(&self.path, &self.target).map_err(because(format!(
            "cannot rename {} to {}",
            self.path.display(),
            self.target.display()
        )))?;
        let dir = match self.target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(because(format!("cannot sync {}", dir.display())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Still open: not committed, so the partial file goes.
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Turns an error into one that says what failed first; the CLI prints only the outermost message.
fn because<E: Display>(what: impl Display) -> impl FnOnce(E) -> anyhow::Error {
    move |error| anyhow::anyhow!("{what}: {error}")
}
