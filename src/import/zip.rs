//! Just enough of the zip format to take one file out of an archive: the
//! central directory is read from the end, the entry found by name (in any
//! folder), and its bytes inflated (deflate) or copied (stored). Zip64,
//! encryption and multi-part archives are refused with a message.

use std::io::Read;

/// The end-of-central-directory record's signature and least size.
const END_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
const END_SIZE: usize = 22;
const ENTRY_SIGNATURE: &[u8; 4] = b"PK\x01\x02";
const LOCAL_SIGNATURE: &[u8; 4] = b"PK\x03\x04";

fn u16_at(bytes: &[u8], at: usize) -> Option<usize> {
    bytes
        .get(at..at + 2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// The names of the archive's files, and the bytes of the first whose
/// name (without folders) is `name`; `Ok(None)` when there is none.
pub(crate) fn extract(
    archive: &[u8],
    name: &str,
) -> Result<(Vec<String>, Option<Vec<u8>>), String> {
    let end = (0..=archive.len().saturating_sub(END_SIZE))
        .rev()
        .find(|&at| archive[at..].starts_with(END_SIGNATURE))
        .ok_or("no zip directory at its end (a truncated download?)")?;
    let malformed = || "its zip directory is malformed".to_owned();
    let count = u16_at(archive, end + 10).ok_or_else(malformed)?;
    let mut at = u32_at(archive, end + 16).ok_or_else(malformed)?;
    if at == 0xFFFF_FFFF {
        return Err("it is a Zip64 archive, which is not supported".into());
    }
    let mut names = Vec::with_capacity(count);
    let mut found = None;
    for _ in 0..count {
        if archive.get(at..at + 4) != Some(ENTRY_SIGNATURE) {
            return Err(malformed());
        }
        let flags = u16_at(archive, at + 8).ok_or_else(malformed)?;
        let method = u16_at(archive, at + 10).ok_or_else(malformed)?;
        let packed = u32_at(archive, at + 20).ok_or_else(malformed)?;
        let name_len = u16_at(archive, at + 28).ok_or_else(malformed)?;
        let extra_len = u16_at(archive, at + 30).ok_or_else(malformed)?;
        let comment_len = u16_at(archive, at + 32).ok_or_else(malformed)?;
        let local = u32_at(archive, at + 42).ok_or_else(malformed)?;
        let entry_name = archive
            .get(at + 46..at + 46 + name_len)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .ok_or_else(malformed)?;
        at += 46 + name_len + extra_len + comment_len;
        if found.is_none() && entry_name.rsplit('/').next() == Some(name) {
            if flags & 1 != 0 {
                return Err(format!("{entry_name} is encrypted"));
            }
            found = Some(read_entry(archive, local, packed, method, &entry_name)?);
        }
        names.push(entry_name);
    }
    Ok((names, found))
}

/// The bytes of the entry whose local header is at `local`.
fn read_entry(
    archive: &[u8],
    local: usize,
    packed: usize,
    method: usize,
    name: &str,
) -> Result<Vec<u8>, String> {
    let malformed = || format!("the zip entry {name} is malformed");
    if archive.get(local..local + 4) != Some(LOCAL_SIGNATURE) {
        return Err(malformed());
    }
    let name_len = u16_at(archive, local + 26).ok_or_else(malformed)?;
    let extra_len = u16_at(archive, local + 28).ok_or_else(malformed)?;
    let start = local + 30 + name_len + extra_len;
    let data = archive.get(start..start + packed).ok_or_else(malformed)?;
    match method {
        0 => Ok(data.to_vec()),
        8 => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| format!("{name} does not inflate: {e}"))?;
            Ok(out)
        }
        other => Err(format!(
            "{name} is compressed with method {other}; only deflate and stored are supported"
        )),
    }
}
