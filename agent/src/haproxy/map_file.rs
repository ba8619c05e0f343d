//! The map file HAProxy reads at start and reload, and atomic file replacement.
//!
//! Runtime API changes live in memory only; the file is what survives a restart or reload.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::debug;

use super::admin_socket::check_word;
use super::Haproxy;
use super::HaproxyError;
use crate::desired::MapEntries;

/// Replaces `$1` with stdin inside the container: temp file, fsync, rename, fsync of the directory.
const REPLACE_FROM_STDIN: &str =
    r#"set -e; t="$1.lbfleet-tmp"; trap 'rm -f "$t"' EXIT; cat > "$t"; sync "$t"; mv -f "$t" "$1"; sync "${1%/*}""#;

/// A map file write: the map serialized when prepared, written when run, so the slow part
/// (fsync of a large file) can happen off the caller's path.
pub struct MapFileWrite {
    driver: Haproxy,
    contents: Vec<u8>,
    entries: usize,
}

impl MapFileWrite {
    /// Atomically replaces the map file with the prepared contents.
    pub async fn run(self) -> Result<(), HaproxyError> {
        let started = Instant::now();
        let bytes = self.contents.len();
        let target = &self.driver.target;
        match &target.map_dir {
            Some(dir) => {
                let name = file_name(&target.map_path)?;
                let path = dir.join(name);
                let contents = self.contents;
                tokio::task::spawn_blocking(move || replace_file(&path, &contents))
                    .await
                    .map_err(|source| HaproxyError::FileTask { path: dir.join(name), source })??;
            }
            None => self.driver.replace_in_container(&target.map_path, self.contents).await?,
        }
        debug!(
            container = %target.container,
            entries = self.entries,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "map file written"
        );
        Ok(())
    }
}

impl Haproxy {
    /// Atomically rewrites the map file, through the host directory when shared, else through `docker exec`.
    pub async fn write_map_file(&self, map: &MapEntries) -> Result<(), HaproxyError> {
        self.prepare_map_file(map)?.run().await
    }

    /// Serializes `map` now for a write that runs later.
    pub fn prepare_map_file(&self, map: &MapEntries) -> Result<MapFileWrite, HaproxyError> {
        Ok(MapFileWrite { driver: self.clone(), contents: serialize_map(map)?, entries: map.len() })
    }

    /// Replaces `path` inside the container with `contents` (temp file + fsync + rename).
    pub(crate) async fn replace_in_container(&self, path: &str, contents: Vec<u8>) -> Result<(), HaproxyError> {
        let docker = self.docker("writing a file in the container")?;
        let cmd = ["sh", "-c", REPLACE_FROM_STDIN, "sh", path];
        docker.exec(&self.target.container, &cmd, Some(contents)).await?.success(&self.target.container, &cmd)?;
        Ok(())
    }
}

/// `key value` lines; refuses entries that would break the line format.
fn serialize_map(map: &MapEntries) -> Result<Vec<u8>, HaproxyError> {
    let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(bytes);
    for (key, value) in map {
        check_word("map key", key)?;
        check_word("map value", value)?;
        out.extend_from_slice(key.as_bytes());
        out.push(b' ');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

fn file_name(path: &str) -> Result<&str, HaproxyError> {
    Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or(HaproxyError::InvalidName { what: "map path", value: path.to_owned() })
}

/// A temp file name next to `path`, unique within this process.
fn temp_path(path: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.{tag}-{}-{n}", std::process::id()))
}

/// Writes `contents` to a new file at `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, contents: &[u8]) -> Result<(), HaproxyError> {
    let io = |source| HaproxyError::File { op: "write", path: path.to_owned(), source };
    let mut file = File::create(path).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Renames `from` to `to` and fsyncs the directory, so the new name survives a crash.
pub(crate) fn rename_synced(from: &Path, to: &Path) -> Result<(), HaproxyError> {
    std::fs::rename(from, to).map_err(|source| HaproxyError::File { op: "rename to", path: to.to_owned(), source })?;
    let dir = to.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(|source| HaproxyError::File {
        op: "fsync directory",
        path: dir.to_owned(),
        source,
    })
}

/// Atomically replaces `path` with `contents`: readers see the old or the new file, never a mix.
pub(crate) fn replace_file(path: &Path, contents: &[u8]) -> Result<(), HaproxyError> {
    let temp = temp_path(path, "tmp");
    let result = write_synced(&temp, contents).and_then(|()| rename_synced(&temp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_one_entry_per_line_and_refuses_unsafe_keys() {
        let mut map = MapEntries::new();
        map.insert("b.com".into(), "shard-2".into());
        map.insert("a.com".into(), "shard-1".into());
        assert_eq!(serialize_map(&map).expect("valid"), b"a.com shard-1\nb.com shard-2\n");
        map.insert("evil.com shard-1\nx.com".into(), "shard-1".into());
        assert!(serialize_map(&map).is_err());
    }

    #[test]
    fn replaces_files_atomically() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fqdn-to-shard.map");
        replace_file(&path, b"a.com shard-1\n").expect("first write");
        replace_file(&path, b"b.com shard-2\n").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"b.com shard-2\n");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, ["fqdn-to-shard.map"], "no temp file left behind");
    }
}
