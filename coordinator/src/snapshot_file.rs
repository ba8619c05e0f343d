//! The snapshot file of `lbfleet snapshot save`, `snapshot verify` and `coordinator restore`.
//!
//! Layout (integers big-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `LBFLSNAP` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | header length H (at most [`MAX_HEADER_BYTES`]) |
//! | 8 | payload length P |
//! | H | header: [`SnapshotHeader`] as JSON, readable with `head -c` |
//! | P | payload: the [`State`], postcard (the encoding of the Raft snapshots) |
//! | 32 | SHA-256 of every byte before it |
//!
//! The lengths come first, so a reader knows where the file must end before it trusts
//! anything else: a truncated or extended file is refused by its length, a corrupted one by
//! its checksum, and only then is the header read and the state decoded.

use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ring::digest;
use serde::Deserialize;
use serde::Serialize;

use crate::state::revocations::unix_time;
use crate::state::State;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"LBFLSNAP";
/// The layout and payload encoding written and read. A change to how `State` encodes (a new
/// field, say) is a new format: an older file would not decode. Format 3 added the history;
/// files of formats 1 and 2 are refused, not migrated.
pub const FORMAT_VERSION: u32 = 3;
/// Largest header accepted: a header holds a few counts and the member list.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// Magic, format version, header length and payload length.
const PREFIX_BYTES: usize = 24;
/// The SHA-256 at the end.
const CHECKSUM_BYTES: usize = 32;

/// What a snapshot file says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The lbfleet release that wrote it.
    pub lbfleet_version: String,
    /// When the state was encoded, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The node that encoded it (the leader at the time).
    pub node_id: u64,
    /// The state's version: the index of the last log entry applied to it.
    pub version: u64,
    /// The Raft term of that entry.
    pub term: u64,
    /// The group's members at that version.
    pub members: Vec<SnapshotMember>,
    /// What the state holds.
    pub counts: Counts,
}

/// A member of the group the snapshot was taken from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMember {
    pub id: u64,
    pub address: String,
    pub voter: bool,
}

/// How many objects of each kind a state holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub clusters: u64,
    pub hosts: u64,
    pub shards: u64,
    pub nodes: u64,
    pub bindings: u64,
    pub revocations: u64,
    /// Records in the history.
    pub history: u64,
}

impl Counts {
    /// The counts of `state`.
    pub fn of(state: &State) -> Counts {
        let len = |n: usize| n as u64;
        Counts {
            clusters: len(state.clusters.len()),
            hosts: len(state.hosts.len()),
            shards: len(state.shards.len()),
            nodes: len(state.nodes.len()),
            bindings: state.clusters.values().map(|c| len(c.bindings.len())).sum(),
            revocations: len(state.revocations.hosts.len() + state.revocations.serials.len()),
            history: len(state.history.len()),
        }
    }
}

/// Where in the group's history a snapshot is taken.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The node that encodes it.
    pub node_id: u64,
    /// The state's version.
    pub version: u64,
    /// The term of the entry at that version.
    pub term: u64,
    /// The members at that version.
    pub members: Vec<SnapshotMember>,
}

/// Why a snapshot file is refused, or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The first bytes are not the magic.
    #[error("not an lbfleet snapshot file (it does not start with {:?})", String::from_utf8_lossy(MAGIC))]
    NotASnapshot,
    /// A format this release cannot read.
    #[error("snapshot format {found} is not readable by lbfleet {} (it reads format {FORMAT_VERSION})", env!("CARGO_PKG_VERSION"))]
    UnsupportedFormat { found: u32 },
    /// Shorter than the fixed prefix, so even its length is unknown.
    #[error("truncated snapshot: {found} bytes, shorter than the {PREFIX_BYTES}-byte prefix of every snapshot file")]
    TooShort { found: u64 },
    /// Ends before the length its prefix gives.
    #[error("truncated snapshot: {found} bytes of the {expected} its prefix announces")]
    Truncated { expected: u64, found: u64 },
    /// Goes on after the length its prefix gives.
    #[error("corrupted snapshot: longer than the {expected} bytes its prefix announces")]
    TooLong { expected: u64 },
    /// A length in the prefix that no file can have.
    #[error("corrupted snapshot: impossible lengths in its prefix (header {header}, payload {payload} bytes)")]
    BadLengths { header: u32, payload: u64 },
    /// The bytes are not the ones the checksum was computed over.
    #[error("corrupted snapshot: its SHA-256 checksum does not match its contents")]
    ChecksumMismatch,
    /// The checksum matches but the header is not one this release reads.
    #[error("unreadable snapshot header: {0}")]
    Header(#[source] serde_json::Error),
    /// The checksum matches but the state does not decode.
    #[error("the snapshot's state cannot be decoded by lbfleet {} (the file was written by lbfleet {written_by}): {source}", env!("CARGO_PKG_VERSION"))]
    State {
        written_by: String,
        #[source]
        source: postcard::Error,
    },
    /// The header's counts are not those of the state it carries.
    #[error("inconsistent snapshot: its header counts {header:?}, its state holds {state:?}")]
    CountsDiffer { header: Counts, state: Counts },
    /// The state could not be encoded.
    #[error("cannot encode the state: {0}")]
    Encode(#[source] postcard::Error),
    /// The header would exceed [`MAX_HEADER_BYTES`].
    #[error("the snapshot header would take {0} bytes, more than {MAX_HEADER_BYTES}")]
    HeaderTooLarge(usize),
}

/// A snapshot file but its checksum: hashing needs no lock on the state, so it is done apart.
pub struct Unsealed {
    bytes: Vec<u8>,
    header: SnapshotHeader,
}

/// Encodes `state` as taken at `origin`.
pub fn encode(state: &State, origin: Origin) -> Result<Unsealed, SnapshotFileError> {
    let header = SnapshotHeader {
        lbfleet_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        node_id: origin.node_id,
        version: origin.version,
        term: origin.term,
        members: origin.members,
        counts: Counts::of(state),
    };
    let json = serde_json::to_vec(&header).map_err(SnapshotFileError::Header)?;
    let header_len = u32::try_from(json.len())
        .ok()
        .filter(|len| *len <= MAX_HEADER_BYTES)
        .ok_or(SnapshotFileError::HeaderTooLarge(json.len()))?;
    let mut bytes = Vec::with_capacity(PREFIX_BYTES + json.len() + 1024);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    bytes.extend_from_slice(&header_len.to_be_bytes());
    bytes.extend_from_slice(&0u64.to_be_bytes());
    bytes.extend_from_slice(&json);
    let payload_start = bytes.len();
    let mut bytes = postcard::to_extend(state, bytes).map_err(SnapshotFileError::Encode)?;
    let payload_len = (bytes.len() - payload_start) as u64;
    bytes[16..PREFIX_BYTES].copy_from_slice(&payload_len.to_be_bytes());
    Ok(Unsealed { bytes, header })
}

impl Unsealed {
    /// What the file will say about itself.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The whole file: these bytes and their checksum.
    pub fn seal(mut self) -> Vec<u8> {
        let checksum = digest::digest(&digest::SHA256, &self.bytes);
        self.bytes.extend_from_slice(checksum.as_ref());
        self.bytes
    }
}

/// A verified snapshot file: its header and the state it carries.
#[derive(Debug)]
pub struct Snapshot {
    pub header: SnapshotHeader,
    pub state: State,
}

/// Verifies a whole file, then decodes its state and checks it against the header.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotFileError> {
    let mut verifier = Verifier::new();
    verifier.update(bytes)?;
    let (header, layout) = verifier.finish_with_layout()?;
    let start = PREFIX_BYTES + layout.header_len;
    // Verified above: the file holds exactly these bytes.
    let payload = &bytes[start..start + layout.payload_len as usize];
    let state_error = |source| SnapshotFileError::State { written_by: header.lbfleet_version.clone(), source };
    let (state, rest): (State, &[u8]) = postcard::take_from_bytes(payload).map_err(state_error)?;
    if !rest.is_empty() {
        return Err(state_error(postcard::Error::DeserializeBadEncoding));
    }
    let counts = Counts::of(&state);
    if counts != header.counts {
        return Err(SnapshotFileError::CountsDiffer { header: header.counts, state: counts });
    }
    Ok(Snapshot { header, state })
}

/// Where a file's parts are, from its prefix.
#[derive(Debug, Clone, Copy)]
struct Layout {
    header_len: usize,
    payload_len: u64,
    /// The whole file's length, checksum included.
    total: u64,
}

impl Layout {
    fn parse(prefix: &[u8]) -> Result<Layout, SnapshotFileError> {
        let word = |range: std::ops::Range<usize>| -> [u8; 4] { prefix[range].try_into().unwrap_or_default() };
        let format = u32::from_be_bytes(word(8..12));
        if format != FORMAT_VERSION {
            return Err(SnapshotFileError::UnsupportedFormat { found: format });
        }
        let header = u32::from_be_bytes(word(12..16));
        let payload = u64::from_be_bytes(prefix[16..PREFIX_BYTES].try_into().unwrap_or_default());
        let total = (PREFIX_BYTES as u64 + CHECKSUM_BYTES as u64 + u64::from(header)).checked_add(payload);
        match total {
            Some(total) if header <= MAX_HEADER_BYTES => {
                Ok(Layout { header_len: header as usize, payload_len: payload, total })
            }
            _ => Err(SnapshotFileError::BadLengths { header, payload }),
        }
    }
}

/// Checks a snapshot file as its bytes arrive, in chunks of any size, keeping only its prefix
/// and header: the file's length from its prefix, then its checksum, then its header.
pub struct Verifier {
    /// Bytes seen so far.
    received: u64,
    /// The prefix and the header, as far as they have arrived.
    kept: Vec<u8>,
    layout: Option<Layout>,
    hash: digest::Context,
    checksum: Vec<u8>,
}

impl Default for Verifier {
    fn default() -> Verifier {
        Verifier::new()
    }
}

impl Verifier {
    /// A verifier that has seen nothing yet.
    pub fn new() -> Verifier {
        Verifier {
            received: 0,
            kept: Vec::with_capacity(PREFIX_BYTES),
            layout: None,
            hash: digest::Context::new(&digest::SHA256),
            checksum: Vec::with_capacity(CHECKSUM_BYTES),
        }
    }

    /// The file's next bytes; fails as soon as they cannot belong to a snapshot file.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), SnapshotFileError> {
        while !data.is_empty() {
            let keep_until = PREFIX_BYTES + self.layout.map_or(0, |l| l.header_len);
            if self.kept.len() >= keep_until {
                return self.consume(data);
            }
            let take = (keep_until - self.kept.len()).min(data.len());
            self.kept.extend_from_slice(&data[..take]);
            self.consume(&data[..take])?;
            data = &data[take..];
            if self.layout.is_none() {
                let seen = self.kept.len().min(MAGIC.len());
                if self.kept[..seen] != MAGIC[..seen] {
                    return Err(SnapshotFileError::NotASnapshot);
                }
                if self.kept.len() == PREFIX_BYTES {
                    self.layout = Some(Layout::parse(&self.kept)?);
                }
            }
        }
        Ok(())
    }

    /// Hashes bytes up to the checksum, keeps the checksum, refuses anything after it.
    fn consume(&mut self, data: &[u8]) -> Result<(), SnapshotFileError> {
        let Some(layout) = self.layout else {
            // Still in the prefix, which is always hashed.
            self.hash.update(data);
            self.received += data.len() as u64;
            return Ok(());
        };
        let hashed_end = layout.total - CHECKSUM_BYTES as u64;
        let hashed = (hashed_end.saturating_sub(self.received)).min(data.len() as u64) as usize;
        self.hash.update(&data[..hashed]);
        let rest = &data[hashed..];
        if self.received + data.len() as u64 > layout.total {
            return Err(SnapshotFileError::TooLong { expected: layout.total });
        }
        self.checksum.extend_from_slice(rest);
        self.received += data.len() as u64;
        Ok(())
    }

    /// Bytes seen so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Checks that the whole file arrived and is intact, and returns its header.
    pub fn finish(self) -> Result<SnapshotHeader, SnapshotFileError> {
        self.finish_with_layout().map(|(header, _)| header)
    }

    fn finish_with_layout(self) -> Result<(SnapshotHeader, Layout), SnapshotFileError> {
        let Some(layout) = self.layout else {
            return Err(SnapshotFileError::TooShort { found: self.received });
        };
        if self.received < layout.total {
            return Err(SnapshotFileError::Truncated { expected: layout.total, found: self.received });
        }
        if self.hash.finish().as_ref() != self.checksum.as_slice() {
            return Err(SnapshotFileError::ChecksumMismatch);
        }
        let header = serde_json::from_slice(&self.kept[PREFIX_BYTES..]).map_err(SnapshotFileError::Header)?;
        Ok((header, layout))
    }
}

impl SnapshotHeader {
    /// When the state was encoded, as RFC 3339 UTC.
    pub fn created_utc(&self) -> String {
        unix_time(self.created_unix_ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use lbfleet_proto::Fqdn;

    use super::*;
    use crate::state::revocations::RevocationTarget;
    use crate::state::AdminState;
    use crate::state::Command;

    fn state() -> State {
        let mut state = State::default();
        let commands = [
            Command::CreateCluster { name: "eu".into(), haproxy_container: None },
            Command::AddHost {
                id: "lb-1".into(),
                cluster: "eu".into(),
                address: "10.0.0.1".into(),
                haproxy_container: None,
            },
            Command::CreateShard { name: "web-1".into(), cluster: "eu".into() },
            Command::AddNode {
                name: "web-1-a".into(),
                shard: "web-1".into(),
                host: "lb-1".into(),
                address: "10.0.1.1:80".into(),
                container: Some("web-1-a".into()),
            },
        ];
        for command in commands {
            state.apply(&command).expect("topology");
        }
        // A drained node must come back drained, with its server id.
        state.apply(&Command::SetNodeState { name: "web-1-a".into(), state: AdminState::Drain }).expect("drain");
        // The history comes back with who made each change, and when.
        for i in 0..20 {
            let fqdn = Fqdn::parse(&format!("site-{i}.example.com")).unwrap();
            let bind = Command::Bind { fqdn, shard: "web-1".into(), cluster: None };
            let by =
                Command::By { by: "admin:alice".into(), at_unix_ms: 1_700_000_000_000 + i, command: Box::new(bind) };
            state.apply_at(&by, 10 + i as u64).expect("bind");
        }
        let revoked = Command::Revoke { target: RevocationTarget::Serial("4f2a".into()), at: 1_700_000_000 };
        state.apply(&revoked).expect("revoke");
        state
    }

    fn origin() -> Origin {
        Origin {
            node_id: 2,
            version: 41,
            term: 3,
            members: vec![SnapshotMember { id: 2, address: "10.0.0.2:7400".into(), voter: true }],
        }
    }

    fn file() -> Vec<u8> {
        encode(&state(), origin()).unwrap().seal()
    }

    /// A file laid out as documented, from its parts, with a correct checksum.
    fn assemble(format: u32, header: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&format.to_be_bytes());
        bytes.extend_from_slice(&(header.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
        bytes
    }

    #[test]
    fn a_snapshot_decodes_to_its_state_and_header() {
        let bytes = file();
        let snapshot = decode(&bytes).unwrap();
        assert_eq!(snapshot.state, state());
        let node = &snapshot.state.nodes["web-1-a"];
        assert_eq!((node.server_id, node.admin), (1, AdminState::Drain));
        let header = snapshot.header;
        assert_eq!((header.node_id, header.version, header.term), (2, 41, 3));
        assert_eq!(
            header.counts,
            Counts { clusters: 1, hosts: 1, shards: 1, nodes: 1, bindings: 20, revocations: 1, history: 26 }
        );
        let bind = snapshot.state.history.records().nth(5).unwrap();
        assert_eq!((&*bind.by, bind.at_unix_ms, bind.version), ("admin:alice", 1_700_000_000_000, 11));
        assert_eq!(bind.fqdn.as_ref().map(Fqdn::as_str), Some("site-0.example.com"));
        assert_eq!(header.members, origin().members);
        assert_eq!(header.lbfleet_version, env!("CARGO_PKG_VERSION"));
        // The layout is the documented one: the same parts assembled independently give the same file.
        let header_len = u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let json = &bytes[PREFIX_BYTES..PREFIX_BYTES + header_len];
        let payload = postcard::to_allocvec(&state()).unwrap();
        assert_eq!(assemble(FORMAT_VERSION, json, &payload), bytes);
        // A header made now differs from the file's only by when it was made.
        let written = serde_json::from_slice::<SnapshotHeader>(json).unwrap();
        let mut fresh = encode(&state(), origin()).unwrap().header().clone();
        fresh.created_unix_ms = written.created_unix_ms;
        assert_eq!(written, fresh);
    }

    #[test]
    fn the_verifier_takes_chunks_of_any_size() {
        let bytes = file();
        for size in [1, 7, 8, 23, 24, 25, 100, 4096] {
            let mut verifier = Verifier::new();
            for chunk in bytes.chunks(size) {
                verifier.update(chunk).unwrap();
            }
            assert_eq!(verifier.received(), bytes.len() as u64);
            assert_eq!(verifier.finish().unwrap().version, 41, "chunks of {size}");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = file();
        for len in 0..bytes.len() {
            let error = decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(error, SnapshotFileError::TooShort { .. } | SnapshotFileError::Truncated { .. }),
                "{len} bytes: {error}"
            );
            assert!(error.to_string().starts_with("truncated snapshot"), "{error}");
        }
        let error = decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("truncated snapshot: {} bytes of the {} its prefix announces", bytes.len() - 1, bytes.len())
        );
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = file();
        for position in 0..bytes.len() {
            let mut corrupted = bytes.clone();
            corrupted[position] ^= 0x20;
            let error = decode(&corrupted).unwrap_err();
            let expected = match position {
                0..8 => matches!(error, SnapshotFileError::NotASnapshot),
                8..12 => matches!(error, SnapshotFileError::UnsupportedFormat { .. }),
                // A length that changed moves the end of the file.
                12..24 => matches!(
                    error,
                    SnapshotFileError::Truncated { .. }
                        | SnapshotFileError::TooLong { .. }
                        | SnapshotFileError::ChecksumMismatch
                        | SnapshotFileError::BadLengths { .. }
                ),
                _ => matches!(error, SnapshotFileError::ChecksumMismatch),
            };
            assert!(expected, "byte {position}: {error}");
        }
    }

    #[test]
    fn extra_bytes_and_foreign_files_are_refused() {
        let mut longer = file();
        longer.push(0);
        let error = decode(&longer).unwrap_err();
        assert!(matches!(error, SnapshotFileError::TooLong { .. }), "{error}");
        let error = decode(b"node_id = 1\nlisten = \"0.0.0.0:7400\"\n").unwrap_err();
        assert_eq!(error.to_string(), "not an lbfleet snapshot file (it does not start with \"LBFLSNAP\")");
        // Format 1 held nodes without server ids and admin states, format 2 no history.
        for old in [1, 2] {
            let error = decode(&assemble(old, b"{}", b"")).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("snapshot format {old} is not readable by lbfleet")),
                "{error}"
            );
        }
        let mut huge = assemble(FORMAT_VERSION, b"{}", b"");
        huge[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode(&huge).unwrap_err(), SnapshotFileError::BadLengths { .. }));
    }

    #[test]
    fn an_intact_file_with_a_state_that_does_not_decode_names_its_writer() {
        let mut header: serde_json::Value = serde_json::to_value(encode(&state(), origin()).unwrap().header()).unwrap();
        header["lbfleet_version"] = "9.9.9".into();
        let json = serde_json::to_vec(&header).unwrap();
        let error = decode(&assemble(FORMAT_VERSION, &json, &[0xff; 16])).unwrap_err();
        assert!(matches!(error, SnapshotFileError::State { .. }), "{error}");
        assert!(error.to_string().contains("written by lbfleet 9.9.9"), "{error}");
        // Trailing bytes after the state are refused too.
        let mut payload = postcard::to_allocvec(&state()).unwrap();
        payload.push(0);
        let error = decode(&assemble(FORMAT_VERSION, &json, &payload)).unwrap_err();
        assert!(matches!(error, SnapshotFileError::State { .. }), "{error}");
    }

    #[test]
    fn a_header_that_does_not_match_its_state_is_refused() {
        let mut header: serde_json::Value = serde_json::to_value(encode(&state(), origin()).unwrap().header()).unwrap();
        header["counts"]["bindings"] = 21.into();
        let json = serde_json::to_vec(&header).unwrap();
        let payload = postcard::to_allocvec(&state()).unwrap();
        let error = decode(&assemble(FORMAT_VERSION, &json, &payload)).unwrap_err();
        assert!(matches!(error, SnapshotFileError::CountsDiffer { .. }), "{error}");
        let error = decode(&assemble(FORMAT_VERSION, b"{\"version\": 1}", &payload)).unwrap_err();
        assert!(matches!(error, SnapshotFileError::Header(_)), "{error}");
    }

    #[test]
    fn an_empty_state_makes_a_valid_file() {
        let snapshot = decode(&encode(&State::default(), origin()).unwrap().seal()).unwrap();
        assert_eq!(snapshot.state, State::default());
        assert_eq!(snapshot.header.counts, Counts::default());
    }
}
