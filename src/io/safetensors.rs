//! Reader and writer for the safetensors format (8-byte header length, JSON header, raw data).
//!
//! Written here rather than taken from a crate so that every failure names the file and tensor,
//! and so that half-precision weights are upcast while reading from a memory map.
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
        }
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A memory-mapped safetensors file.
pub struct SafeTensorsFile {
    path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafeTensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "bin" || e == "pt" || e == "ckpt") {
            bail!(
                "{}: pickle checkpoints are not read (they can run code); convert it to .safetensors",
                path.display()
            );
        }
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and the file is not modified by this process while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        let (data_start, tensors, metadata) =
            parse_header(&map).with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(Self { path: path.to_path_buf(), map, data_start, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// A tensor's header entry and raw little-endian bytes.
    fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: no tensor named `{name}`", self.path.display()))?;
        Ok((info, &self.map[self.data_start + info.start..self.data_start + info.end]))
    }

    /// The tensor's values as f32 (half and double precision are converted).
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.raw(name)?;
        let values = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => bail!("{}: tensor `{name}` has dtype {} where a float is expected", self.path.display(), other.name()),
        };
        Ok((info.shape.clone(), values))
    }

    /// The tensor's values as i64 (for token ids and similar).
    pub fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (info, bytes) = self.raw(name)?;
        let values = match info.dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            other => bail!("{}: tensor `{name}` has dtype {} where an integer is expected", self.path.display(), other.name()),
        };
        Ok((info.shape.clone(), values))
    }
}

fn parse_header(bytes: &[u8]) -> Result<(usize, BTreeMap<String, TensorInfo>, BTreeMap<String, String>)> {
    if bytes.len() < 8 {
        bail!("file is {} bytes long, shorter than the 8-byte header length", bytes.len());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    if n > bytes.len() - 8 {
        bail!("header claims {n} bytes but the file has {} (truncated?)", bytes.len() - 8);
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).context("header is not a JSON object")?;
    let data_len = bytes.len() - 8 - n;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            if let Value::Object(m) = v {
                for (k, v) in m {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    metadata.insert(k, s);
                }
            }
            continue;
        }
        let dtype_s = v.get("dtype").and_then(Value::as_str).with_context(|| format!("tensor `{name}` has no dtype"))?;
        let dtype = Dtype::parse(dtype_s).with_context(|| format!("tensor `{name}` has unsupported dtype {dtype_s}"))?;
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(Value::as_array)
            .with_context(|| format!("tensor `{name}` has no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .with_context(|| format!("tensor `{name}` has a malformed shape"))?;
        let offs = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .with_context(|| format!("tensor `{name}` has no data_offsets"))?;
        let (start, end) = match (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) {
            (Some(a), Some(b)) => (a as usize, b as usize),
            _ => bail!("tensor `{name}` has malformed data_offsets"),
        };
        let expected = shape.iter().product::<usize>() * dtype.size();
        if end < start || end - start != expected {
            bail!("tensor `{name}` spans {} bytes but shape {:?} of {} needs {expected}", end.saturating_sub(start), shape, dtype.name());
        }
        if end > data_len {
            bail!("tensor `{name}` ends at byte {end} but the data section has {data_len} bytes (truncated file)");
        }
        tensors.insert(name, TensorInfo { dtype, shape, start, end });
    }
    Ok((8 + n, tensors, metadata))
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // Subnormal: normalise the mantissa.
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// IEEE single to half precision, rounding to nearest even (overflow to infinity).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: shift the mantissa (with its implicit one) right, rounding to nearest even.
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1u32 << shift) - 1);
        let mut h = (m >> shift) as u16;
        if rest > half || (rest == half && (h & 1) == 1) {
            h += 1;
        }
        return sign | h;
    }
    let mut h = ((e as u32) << 10 | (mant >> 13)) as u16;
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
        // May carry into the exponent, which is the correct rounding (up to infinity).
        h += 1;
    }
    sign | h
}

/// A tensor to be written: f32 values with a shape.
pub struct OwnedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Element type of a written file: every tensor is given as f32 and stored as this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAs {
    F32,
    /// IEEE half precision, rounded to nearest even.
    F16,
}

/// Serialises f32 tensors and string metadata into safetensors bytes. Names are sorted, so the
/// same tensors always give the same bytes.
pub fn serialize(tensors: &BTreeMap<String, OwnedTensor>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    serialize_as(tensors, metadata, StoreAs::F32)
}

/// [`serialize`], storing every tensor as `store`.
pub fn serialize_as(tensors: &BTreeMap<String, OwnedTensor>, metadata: &BTreeMap<String, String>, store: StoreAs) -> Result<Vec<u8>> {
    let (size, dtype) = match store {
        StoreAs::F32 => (4, "F32"),
        StoreAs::F16 => (2, "F16"),
    };
    let mut header = Map::new();
    if !metadata.is_empty() {
        let m: Map<String, Value> = metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        header.insert("__metadata__".into(), Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            bail!("tensor `{name}`: shape {:?} holds {n} values but {} were given", t.shape, t.data.len());
        }
        let mut e = Map::new();
        e.insert("dtype".into(), Value::String(dtype.into()));
        e.insert("shape".into(), Value::Array(t.shape.iter().map(|&d| Value::from(d as u64)).collect()));
        e.insert("data_offsets".into(), Value::Array(vec![Value::from(offset as u64), Value::from((offset + n * size) as u64)]));
        header.insert(name.clone(), Value::Object(e));
        offset += n * size;
    }
    let mut json = serde_json::to_vec(&Value::Object(header))?;
    // Pad the header so the data section is 8-byte aligned, as the reference writer does.
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in tensors.values() {
        for &v in &t.data {
            match store {
                StoreAs::F32 => out.extend_from_slice(&v.to_le_bytes()),
                StoreAs::F16 => out.extend_from_slice(&f32_to_f16(v).to_le_bytes()),
            }
        }
    }
    Ok(out)
}

/// Writes tensors atomically to `path`.
pub fn write(path: &Path, tensors: &BTreeMap<String, OwnedTensor>, metadata: &BTreeMap<String, String>) -> Result<()> {
    write_as(path, tensors, metadata, StoreAs::F32)
}

/// [`write`], storing every tensor as `store`.
pub fn write_as(path: &Path, tensors: &BTreeMap<String, OwnedTensor>, metadata: &BTreeMap<String, String>, store: StoreAs) -> Result<()> {
    let bytes = serialize_as(tensors, metadata, store)?;
    super::atomic::write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }

    #[test]
    fn half_precision_round_trip() {
        for x in [0.0f32, 1.0, -2.0, 65504.0, 5.960_464_5e-8, 0.1, 3.25, -1e-5, 1e-7] {
            let back = f16_to_f32(f32_to_f16(x));
            let tol = (x.abs() * 1e-3).max(6e-8);
            assert!((back - x).abs() <= tol, "{x} -> {back}");
        }
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        // Every half value survives the round trip exactly.
        for h in 0u16..0x7c00 {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
    }

    #[test]
    fn half_precision_files_read_back() {
        let dir = std::env::temp_dir().join(format!("catlora-st16-{}", std::process::id()));
        let path = dir.join("h.safetensors");
        let t = BTreeMap::from([("w".to_string(), OwnedTensor { shape: vec![3], data: vec![1.0, -0.1, 65504.0] })]);
        write_as(&path, &t, &BTreeMap::new(), StoreAs::F16).unwrap();
        let f = SafeTensorsFile::open(&path).unwrap();
        assert_eq!(f.info("w").unwrap().dtype, Dtype::F16);
        assert_eq!(f.f32("w").unwrap(), (vec![3], vec![1.0, f16_to_f32(f32_to_f16(-0.1)), 65504.0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = std::env::temp_dir().join(format!("catlora-st-{}", std::process::id()));
        let path = dir.join("t.safetensors");
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), OwnedTensor { shape: vec![2, 3], data: (0..6).map(|i| i as f32).collect() });
        let mut md = BTreeMap::new();
        md.insert("k".to_string(), "v".to_string());
        write(&path, &t, &md).unwrap();
        let f = SafeTensorsFile::open(&path).unwrap();
        assert_eq!(f.f32("a").unwrap(), (vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
        assert_eq!(f.metadata().get("k").map(String::as_str), Some("v"));
        let err = f.f32("b").unwrap_err().to_string();
        assert!(err.contains("no tensor named `b`"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = format!("{:#}", SafeTensorsFile::open(&path).err().unwrap());
        assert!(err.contains("truncated"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
