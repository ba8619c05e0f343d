//! Binary encoding of log entries, snapshots and Raft messages (postcard: compact and fast).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a value; only fails for types postcard cannot represent, which would be a programming error.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a value, refusing trailing garbage-free but malformed input with an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
