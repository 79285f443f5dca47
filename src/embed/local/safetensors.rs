//! The `safetensors` format: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the bytes.
//! Tensors come out as `f32` whatever they were stored as (F32, F16, BF16).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// An open file: its header, read; tensors are read from the file when
/// asked for, a chunk at a time, so loading a model never holds the whole
/// file in memory beside the tensors made from it.
pub struct SafeTensors {
    file: File,
    path: PathBuf,
    entries: HashMap<String, Entry>,
    /// Where the tensors' bytes start in the file.
    data_start: u64,
}

/// Bytes read and converted at a time.
const CHUNK: usize = 1 << 18;

impl SafeTensors {
    /// Opens `path` and checks its header against the file's length; `Err`
    /// says what is malformed.
    pub fn open(path: &Path) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let mut file = File::open(path).map_err(fail)?;
        let file_len = file.metadata().map_err(fail)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| "the file is shorter than its header".to_owned())?;
        let header_len = u64::from_le_bytes(len);
        if header_len.saturating_add(8) > file_len {
            return Err("the header runs past the end of the file".to_owned());
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(fail)?;
        let mut raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| format!("the header is not valid JSON: {e}"))?;
        raw.remove("__metadata__");
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| format!("tensor {name}'s header is not valid: {e}"))?;
            let [begin, end] = entry.data_offsets;
            let count: usize = entry.shape.iter().product();
            let width = dtype_width(&entry.dtype)
                .ok_or_else(|| format!("tensor {name} has an unknown dtype {}", entry.dtype))?;
            if begin > end || end as u64 > data_len || end - begin != count * width {
                return Err(format!("tensor {name}'s bytes do not match its shape"));
            }
            entries.insert(name, entry);
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            entries,
            data_start,
        })
    }

    /// The names of the tensors held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor `name` as `f32`s: `Ok(None)` if the file holds no float
    /// tensor of that name, `Err` if reading it fails.
    pub fn get(&self, name: &str) -> Result<Option<Tensor>, String> {
        let Some(entry) = self.entries.get(name) else {
            return Ok(None);
        };
        let convert: fn(&[u8], &mut Vec<f32>) = match entry.dtype.as_str() {
            "F32" => |bytes, out| {
                out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                )
            },
            "F16" => |bytes, out| {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
                )
            },
            "BF16" => |bytes, out| {
                out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
                )
            },
            _ => return Ok(None),
        };
        let fail = |e: std::io::Error| format!("cannot read {}: {e}", self.path.display());
        let [begin, end] = entry.data_offsets;
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.data_start + begin as u64))
            .map_err(fail)?;
        let width = dtype_width(&entry.dtype).unwrap_or(4);
        let mut data = Vec::with_capacity((end - begin) / width);
        // Whole elements per chunk.
        let mut buffer = vec![0u8; CHUNK - CHUNK % width];
        let mut left = end - begin;
        while left > 0 {
            let take = left.min(buffer.len());
            file.read_exact(&mut buffer[..take]).map_err(fail)?;
            convert(&buffer[..take], &mut data);
            left -= take;
        }
        Ok(Some(Tensor {
            shape: entry.shape.clone(),
            data,
        }))
    }
}

fn dtype_width(dtype: &str) -> Option<usize> {
    match dtype {
        "F64" | "I64" | "U64" => Some(8),
        "F32" | "I32" | "U32" => Some(4),
        "F16" | "BF16" | "I16" | "U16" => Some(2),
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => Some(1),
        _ => None,
    }
}

/// IEEE half precision to single, subnormals, infinities and NaN included.
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: shift the mantissa up until its leading one is implicit.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `header` and `data`, kept as long as the directory lives.
    fn file(dir: &tempfile::TempDir, header: &str, data: &[u8]) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        let path = dir.path().join(format!("{}.safetensors", bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_f32_f16_and_bf16() {
        let mut data = Vec::new();
        for x in [1.5f32, -2.0] {
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.extend_from_slice(&0x3e00u16.to_le_bytes()); // 1.5 as f16
        data.extend_from_slice(&0x0001u16.to_le_bytes()); // smallest f16 subnormal
        data.extend_from_slice(&0xc000u16.to_le_bytes()); // -2.0 as bf16
        let header = r#"{"__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
            "b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]},
            "c":{"dtype":"BF16","shape":[1],"data_offsets":[12,14]}}"#;
        let dir = tempfile::tempdir().unwrap();
        let st = SafeTensors::open(&file(&dir, header, &data)).unwrap();
        assert_eq!(st.get("a").unwrap().unwrap().data, vec![1.5, -2.0]);
        let b = st.get("b").unwrap().unwrap();
        assert_eq!(b.shape, vec![1, 2]);
        assert_eq!(b.data, vec![1.5, 2f32.powi(-24)]);
        assert_eq!(st.get("c").unwrap().unwrap().data, vec![-2.0]);
        assert!(st.get("d").unwrap().is_none());
    }

    #[test]
    fn a_truncated_or_inconsistent_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let err = SafeTensors::open(&file(&dir, header, &[0; 8]))
            .err()
            .unwrap();
        assert!(err.contains("tensor a"), "{err}");
        let short = dir.path().join("short");
        std::fs::write(&short, [1, 2, 3]).unwrap();
        assert!(SafeTensors::open(&short).is_err());
        let long = file(&dir, header, &[0; 16]);
        let mut bytes = std::fs::read(&long).unwrap();
        bytes[0] = 0xff;
        std::fs::write(&long, bytes).unwrap();
        assert!(SafeTensors::open(&long).is_err());
    }
}
