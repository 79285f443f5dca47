//! The `safetensors` format: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the bytes.
//! Tensors come out as `f32` whatever they were stored as (F32, F16, BF16).

use std::collections::HashMap;

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

/// A parsed file: the header, and the bytes it points into.
pub struct SafeTensors {
    entries: HashMap<String, Entry>,
    data: Vec<u8>,
}

impl SafeTensors {
    /// Parses `bytes` (a whole file); `Err` says what is malformed.
    pub fn parse(mut bytes: Vec<u8>) -> Result<Self, String> {
        let header_len = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or("the file is shorter than its header")?;
        let header_end = usize::try_from(header_len)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&end| end <= bytes.len())
            .ok_or("the header runs past the end of the file")?;
        let mut raw: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..header_end])
                .map_err(|e| format!("the header is not valid JSON: {e}"))?;
        raw.remove("__metadata__");
        let mut entries = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| format!("tensor {name}'s header is not valid: {e}"))?;
            entries.insert(name, entry);
        }
        let data = bytes.split_off(header_end);
        for (name, entry) in &entries {
            let [begin, end] = entry.data_offsets;
            let count: usize = entry.shape.iter().product();
            let width = dtype_width(&entry.dtype)
                .ok_or_else(|| format!("tensor {name} has an unknown dtype {}", entry.dtype))?;
            if begin > end || end > data.len() || end - begin != count * width {
                return Err(format!("tensor {name}'s bytes do not match its shape"));
            }
        }
        Ok(Self { entries, data })
    }

    /// The names of the tensors held.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The tensor `name` as `f32`s, if the file holds it as floats.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        let entry = self.entries.get(name)?;
        let bytes = &self.data[entry.data_offsets[0]..entry.data_offsets[1]];
        let data = match entry.dtype.as_str() {
            "F32" => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            "BF16" => bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            _ => return None,
        };
        Some(Tensor {
            shape: entry.shape.clone(),
            data,
        })
    }
}

/// Bytes per element; every dtype is checked, only floats are read.
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
fn f16_to_f32(h: u16) -> f32 {
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

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
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
        let st = SafeTensors::parse(file(header, &data)).unwrap();
        assert_eq!(st.get("a").unwrap().data, vec![1.5, -2.0]);
        let b = st.get("b").unwrap();
        assert_eq!(b.shape, vec![1, 2]);
        assert_eq!(b.data, vec![1.5, 2f32.powi(-24)]);
        assert_eq!(st.get("c").unwrap().data, vec![-2.0]);
        assert!(st.get("d").is_none());
    }

    #[test]
    fn a_truncated_or_inconsistent_file_is_refused() {
        let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let err = SafeTensors::parse(file(header, &[0; 8])).err().unwrap();
        assert!(err.contains("tensor a"), "{err}");
        assert!(SafeTensors::parse(vec![1, 2, 3]).is_err());
        let mut long = file(header, &[0; 16]);
        long[0] = 0xff;
        assert!(SafeTensors::parse(long).is_err());
    }
}
