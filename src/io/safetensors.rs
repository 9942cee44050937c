//! Reader and writer for the safetensors format (8-byte header length, JSON header, raw data).
//!
//! The header is validated by the reference implementation (the `safetensors` crate, fuzzed
//! upstream: sizes with checked arithmetic, offsets contiguous from 0 to the end of the file);
//! values are read from a memory map and upcast to f32 here, and every failure names the file
//! and tensor. Model and adapter weights are read with [`SafeTensorsFile::f32_finite`], which
//! refuses NaN and infinities by name.
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The element types catlora reads; any other type the format allows is kept by name and
/// refused when the tensor is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    Other(safetensors::Dtype),
}

impl Dtype {
    fn of(d: safetensors::Dtype) -> Self {
        use safetensors::Dtype as S;
        match d {
            S::F32 => Dtype::F32,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::F64 => Dtype::F64,
            S::I64 => Dtype::I64,
            S::I32 => Dtype::I32,
            other => Dtype::Other(other),
        }
    }
    pub fn name(self) -> String {
        match self {
            Dtype::F32 => "F32".into(),
            Dtype::F16 => "F16".into(),
            Dtype::BF16 => "BF16".into(),
            Dtype::F64 => "F64".into(),
            Dtype::I64 => "I64".into(),
            Dtype::I32 => "I32".into(),
            Dtype::Other(d) => format!("{d:?}"),
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
            bail!("{}: pickle checkpoints are not read (they can run code); convert it to .safetensors", path.display());
        }
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and the file is not modified by this process while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot memory-map {}", path.display()))?;
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
        let info = self.tensors.get(name).with_context(|| format!("{}: no tensor named `{name}`", self.path.display()))?;
        Ok((info, &self.map[self.data_start + info.start..self.data_start + info.end]))
    }

    /// The tensor's values as f32 (half and double precision are converted).
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (info, bytes) = self.raw(name)?;
        let values = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect(),
            Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
            other => bail!("{}: tensor `{name}` has dtype {} where a float is expected", self.path.display(), other.name()),
        };
        Ok((info.shape.clone(), values))
    }

    /// [`Self::f32`], refusing NaN and infinite values (weights and adapters: one would make
    /// every image black).
    pub fn f32_finite(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, values) = self.f32(name)?;
        // A branch-free pass first (it vectorises: a third of the read's time instead of twice
        // it, `examples/finite_check_timing.rs`), the position only when something is wrong.
        let all_finite = values.iter().fold(true, |ok, v| ok & v.is_finite());
        if !all_finite && let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!("{}: tensor `{name}` holds a non-finite value ({v} at flat index {i})", self.path.display());
        }
        Ok((shape, values))
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

type Header = (usize, BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Validates safetensors bytes as [`SafeTensorsFile::open`] does; the number of tensors.
pub fn check_bytes(bytes: &[u8]) -> Result<usize> {
    Ok(parse_header(bytes)?.1.len())
}

fn parse_header(bytes: &[u8]) -> Result<Header> {
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| describe(e, bytes))?;
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            (name, TensorInfo { dtype: Dtype::of(info.dtype), shape: info.shape.clone(), start, end })
        })
        .collect();
    let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((8 + n, tensors, metadata))
}

/// The reference implementation's error in words, naming the tensor where it can be found.
fn describe(e: safetensors::SafeTensorError, bytes: &[u8]) -> anyhow::Error {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => anyhow::anyhow!("file is {} bytes long, shorter than the 8-byte header length", bytes.len()),
        E::HeaderTooLarge | E::InvalidHeaderLength => {
            let n = bytes.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
            anyhow::anyhow!("header claims {n} bytes but the file has {} after the length (truncated?)", bytes.len().saturating_sub(8))
        }
        E::InvalidHeader(_) | E::InvalidHeaderStart => anyhow::anyhow!("the header is not UTF-8 JSON"),
        E::InvalidHeaderDeserialization(err) => anyhow::anyhow!("the header is not a valid safetensors header: {err}"),
        E::InvalidOffset(name) => anyhow::anyhow!("tensor `{name}`: its data offsets overlap another tensor's or leave a gap"),
        E::ValidationOverflow => anyhow::anyhow!("a tensor's shape is too large to address ({})", inconsistent_tensor(bytes)),
        E::TensorInvalidInfo => anyhow::anyhow!("a tensor's data offsets do not fit its shape and dtype ({})", inconsistent_tensor(bytes)),
        E::MetadataIncompleteBuffer => {
            anyhow::anyhow!("the data section is not exactly the tensors' bytes (truncated file, or trailing data)")
        }
        other => anyhow::anyhow!("{other:?}"),
    }
}

/// Names the first tensor whose shape, dtype and offsets disagree (for error messages).
fn inconsistent_tensor(bytes: &[u8]) -> String {
    let header = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
        .and_then(|h| serde_json::from_slice::<Map<String, Value>>(h).ok());
    let Some(header) = header else { return "unreadable header".into() };
    for (name, v) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let size = v.get("dtype").and_then(Value::as_str).and_then(|d| match d {
            "F64" | "I64" | "U64" => Some(8u64),
            "F32" | "I32" | "U32" => Some(4),
            "F16" | "BF16" | "I16" | "U16" => Some(2),
            "I8" | "U8" | "BOOL" => Some(1),
            _ => None,
        });
        let shape: Option<Vec<u64>> = v.get("shape").and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_u64).collect());
        let offsets: Option<Vec<u64>> = v.get("data_offsets").and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_u64).collect());
        let (Some(size), Some(shape), Some(offsets)) = (size, shape, offsets) else { continue };
        let need = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
        let span = offsets.get(1).zip(offsets.first()).and_then(|(e, s)| e.checked_sub(*s));
        if need.is_none() || need != span {
            let need = need.map_or("more than 2^64".to_string(), |n| n.to_string());
            return format!("tensor `{name}`: shape {shape:?} needs {need} bytes, its offsets span {span:?}");
        }
    }
    "no single tensor to blame".into()
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// IEEE single to half precision, rounding to nearest even (overflow to infinity).
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
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
    /// bfloat16, rounded to nearest even.
    BF16,
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
        StoreAs::BF16 => (2, "BF16"),
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
                StoreAs::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes()),
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
