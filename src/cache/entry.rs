//! How a cached result is stored: `version (u64 BE) | expires (unix ms, u64
//! BE) | JSON`. The reader serves it only at the same version and before it
//! expires; anything else, including bytes it cannot parse, is a miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

const HEADER: usize = 16;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `value` as an entry built at `version`, served for `ttl`.
pub fn encode<T: Serialize>(version: u64, ttl: Duration, value: &T) -> Option<Vec<u8>> {
    let expires = now_ms().saturating_add(ttl.as_millis() as u64);
    let mut bytes = Vec::with_capacity(512);
    bytes.extend_from_slice(&version.to_be_bytes());
    bytes.extend_from_slice(&expires.to_be_bytes());
    serde_json::to_writer(&mut bytes, value).ok()?;
    Some(bytes)
}

/// The value, when `bytes` is an unexpired entry built at exactly `version`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], version: u64) -> Option<T> {
    if bytes.len() < HEADER {
        return None;
    }
    let (header, json) = bytes.split_at(HEADER);
    let built_at = u64::from_be_bytes(header[..8].try_into().ok()?);
    let expires = u64::from_be_bytes(header[8..].try_into().ok()?);
    if built_at != version || expires <= now_ms() {
        return None;
    }
    serde_json::from_slice(json).ok()
}

/// A vector as stored: f32 little-endian.
pub fn encode_vector(vector: &[f32]) -> Vec<u8> {
    crate::embed::to_le_bytes(vector)
}

/// The vector, when `bytes` holds exactly `dims` floats.
pub fn decode_vector(bytes: &[u8], dims: usize) -> Option<Vec<f32>> {
    if bytes.len() != dims * 4 {
        return None;
    }
    crate::embed::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_only_at_its_version_and_before_it_expires() {
        let value = vec!["espresso".to_owned(), "Lisbon".to_owned()];
        let bytes = encode(7, Duration::from_secs(60), &value).unwrap();
        assert_eq!(decode::<Vec<String>>(&bytes, 7), Some(value.clone()));
        assert_eq!(decode::<Vec<String>>(&bytes, 8), None);
        assert_eq!(decode::<Vec<String>>(&bytes, 6), None);

        let expired = encode(7, Duration::ZERO, &value).unwrap();
        assert_eq!(decode::<Vec<String>>(&expired, 7), None);

        assert_eq!(decode::<Vec<String>>(&bytes[..10], 7), None);
        let mut garbled = bytes.clone();
        garbled.truncate(bytes.len() - 2);
        assert_eq!(decode::<Vec<String>>(&garbled, 7), None);
    }

    #[test]
    fn vectors_round_trip_and_wrong_lengths_are_misses() {
        let v = vec![0.25f32, -1.5, 3.0e-8];
        let bytes = encode_vector(&v);
        assert_eq!(decode_vector(&bytes, 3), Some(v));
        assert_eq!(decode_vector(&bytes, 4), None);
    }
}
