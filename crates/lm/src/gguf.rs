//! Reading and validating GGUF files before anything trusts them.
//!
//! candle's reader parses the header; this module checks what a truncated or foreign
//! file gets wrong (magic, tensor data past the end of the file, missing tensors,
//! unsupported architecture) and turns it into an [`Error`] naming the file, and
//! summarises the file for `overseer model info` ([`GgufInfo`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use memmap2::Mmap;
use serde::Serialize;

use crate::config::{Architecture, ModelConfig, meta_str};
use crate::{Error, Result};

/// Arrays longer than this are summarised in [`GgufInfo::metadata`] (the vocabulary and
/// merges would otherwise be megabytes of JSON).
const MAX_ARRAY_IN_INFO: usize = 16;

/// llama.cpp's name of a GGML block format.
pub(crate) fn dtype_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// GGML block format (`Q4_K`, `F32`, ...).
    pub dtype: String,
    /// Shape in row-major order (rows first: `[out, in]` for a weight matrix).
    pub shape: Vec<usize>,
    /// Byte offset of the data within the file.
    pub offset: u64,
    /// Size of the data in bytes.
    pub bytes: u64,
}

/// Count and size of the tensors stored in one block format.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TypeCount {
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

/// Summary of a GGUF model file (`overseer model info`).
#[derive(Debug, Clone, Serialize)]
pub struct GgufInfo {
    pub path: PathBuf,
    pub file_size: u64,
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// The model's hyper-parameters (`None` when the architecture is unsupported or
    /// its metadata is invalid).
    pub config: Option<ModelConfig>,
    /// Why a supported architecture's hyper-parameters were refused (the error loading
    /// the model would give).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// Total number of weights.
    pub parameter_count: u64,
    /// The block format holding most weights, e.g. `Q5_0`.
    pub quantization: String,
    /// `general.file_type` as llama.cpp names it (e.g. `Q4_K_M`), if known.
    pub file_type: Option<String>,
    /// Tensors per block format.
    pub tensor_types: BTreeMap<String, TypeCount>,
    /// Whether `tokenizer.chat_template` is present.
    pub has_chat_template: bool,
    pub chat_template: Option<String>,
    /// Metadata as JSON; long arrays are replaced by a `"[N x type]"` string.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// All tensors, sorted by name.
    pub tensors: Vec<TensorInfo>,
}

/// llama.cpp's `llama_ftype` names.
fn file_type_name(v: usize) -> Option<&'static str> {
    Some(match v {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        32 => "BF16",
        _ => return None,
    })
}

fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::U8(x) => J::from(*x),
        Value::I8(x) => J::from(*x),
        Value::U16(x) => J::from(*x),
        Value::I16(x) => J::from(*x),
        Value::U32(x) => J::from(*x),
        Value::I32(x) => J::from(*x),
        Value::U64(x) => J::from(*x),
        Value::I64(x) => J::from(*x),
        Value::F32(x) => J::from(*x),
        Value::F64(x) => J::from(*x),
        Value::Bool(x) => J::from(*x),
        Value::String(s) => J::from(s.as_str()),
        Value::Array(a) if a.len() > MAX_ARRAY_IN_INFO => {
            let ty = a
                .first()
                .map_or("empty".to_string(), |x| format!("{:?}", x.value_type()));
            J::from(format!("[{} x {}]", a.len(), ty.to_lowercase()))
        }
        Value::Array(a) => J::Array(a.iter().map(value_to_json).collect()),
    }
}

/// Number of elements of a tensor of shape `dims`, `None` when it does not fit a
/// `usize` (ggml, and candle's own size computations, work in `usize`).
fn element_count(dims: &[usize]) -> Option<u64> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .map(|n| n as u64)
}

/// A scan of the GGUF metadata for the values candle's reader uses unchecked.
mod header {
    use std::io::{Read, Seek};

    /// GGUF value type ids.
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;

    /// Whether `v` is a usable `general.alignment`: llama.cpp requires a power of two.
    pub(super) fn valid_alignment(v: u64) -> bool {
        v.is_power_of_two() && v <= 1 << 30
    }

    /// `general.alignment` as stored: `Some(value)` when present (0 for a value that is
    /// not an unsigned integer, which makes it invalid), `None` when absent or when the
    /// header is malformed (candle's reader then reports the malformation).
    pub(super) fn alignment<R: Read + Seek>(r: &mut R, file_size: u64) -> Option<u64> {
        let mut s = Scan { r, file_size };
        let mut magic = [0u8; 4];
        s.r.read_exact(&mut magic).ok()?;
        let version = s.u32()?;
        let wide = match version {
            1 => false,
            2 | 3 => true,
            _ => return None,
        };
        let _tensors = s.len(wide)?;
        let kvs = s.len(wide)?;
        for _ in 0..kvs {
            let key_len = s.len(wide)?;
            if key_len > s.remaining()? {
                return None;
            }
            let mut key = vec![0u8; usize::try_from(key_len).ok()?];
            s.r.read_exact(&mut key).ok()?;
            let ty = s.u32()?;
            if key == b"general.alignment" {
                // The integer types candle's reader takes (others it would silently
                // replace by 32, so they count as invalid here).
                return Some(match ty {
                    0 => u64::from(s.bytes::<1>()?[0]),
                    1 => u64::try_from(i8::from_le_bytes(s.bytes::<1>()?)).unwrap_or(0),
                    2 => u64::from(u16::from_le_bytes(s.bytes::<2>()?)),
                    3 => u64::try_from(i16::from_le_bytes(s.bytes::<2>()?)).unwrap_or(0),
                    4 => u64::from(s.u32()?),
                    5 => u64::try_from(i32::from_le_bytes(s.bytes::<4>()?)).unwrap_or(0),
                    _ => 0,
                });
            }
            s.skip_value(ty, wide, 0)?;
        }
        None
    }

    struct Scan<'a, R> {
        r: &'a mut R,
        file_size: u64,
    }

    impl<R: Read + Seek> Scan<'_, R> {
        fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
            let mut b = [0u8; N];
            self.r.read_exact(&mut b).ok()?;
            Some(b)
        }

        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.bytes::<4>()?))
        }

        /// A length or count: u32 in GGUF v1, u64 after.
        fn len(&mut self, wide: bool) -> Option<u64> {
            if wide {
                Some(u64::from_le_bytes(self.bytes::<8>()?))
            } else {
                self.u32().map(u64::from)
            }
        }

        fn remaining(&mut self) -> Option<u64> {
            self.file_size.checked_sub(self.r.stream_position().ok()?)
        }

        fn skip(&mut self, n: u64) -> Option<()> {
            if n > self.remaining()? {
                return None;
            }
            self.r.seek_relative(i64::try_from(n).ok()?).ok()
        }

        /// Skip one value of type `ty`; `None` on anything malformed.
        fn skip_value(&mut self, ty: u32, wide: bool, depth: u32) -> Option<()> {
            let fixed = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                STRING => {
                    let n = self.len(wide)?;
                    return self.skip(n);
                }
                ARRAY if depth < 8 => {
                    let elem = self.u32()?;
                    let n = self.len(wide)?;
                    if elem == STRING || elem == ARRAY {
                        // Each element takes at least its length prefix.
                        if n > self.remaining()? {
                            return None;
                        }
                        for _ in 0..n {
                            self.skip_value(elem, wide, depth + 1)?;
                        }
                        return Some(());
                    }
                    let size = match elem {
                        0 | 1 | 7 => 1u64,
                        2 | 3 => 2,
                        4..=6 => 4,
                        10..=12 => 8,
                        _ => return None,
                    };
                    return self.skip(n.checked_mul(size)?);
                }
                _ => return None,
            };
            self.skip(fixed)
        }
    }
}

/// The first line of an error message (candle appends a backtrace when
/// `RUST_BACKTRACE` is set; the user gets one line).
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Read and validate a GGUF header from `reader` (at the start of a file of `file_size`
/// bytes): magic, parseable metadata, every tensor's data inside the file. `path` only
/// names the file in errors.
///
/// Errors: [`Error::Io`], [`Error::BadMagic`], [`Error::Corrupt`], [`Error::Metadata`].
fn read_header<R: Read + Seek>(reader: &mut R, file_size: u64, path: &Path) -> Result<Content> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut head = Vec::with_capacity(4);
    (&mut *reader).take(4).read_to_end(&mut head).map_err(io)?;
    let mut magic = [0u8; 4];
    magic[..head.len()].copy_from_slice(&head);
    if head.len() < 4 || &magic != b"GGUF" {
        return Err(Error::BadMagic {
            path: path.to_path_buf(),
            magic,
        });
    }
    // candle's reader divides by `general.alignment`: check it first.
    reader.rewind().map_err(io)?;
    if let Some(v) = header::alignment(reader, file_size)
        && !header::valid_alignment(v)
    {
        return Err(Error::Metadata {
            path: path.to_path_buf(),
            key: "general.alignment".into(),
            reason: format!(
                "{v} is not a power of two between 1 and 2^30 stored as an integer of at most 32 bits"
            ),
        });
    }
    reader.rewind().map_err(io)?;
    let content =
        Content::read(reader).map_err(|e| corrupt(format!("header: {}", first_line(&e))))?;
    // Every tensor's data must lie inside the file (a truncated download fails here
    // instead of at the first read). Sizes are computed with checked arithmetic: a
    // shape whose product wraps around is refused, not counted as empty.
    for (name, t) in &content.tensor_infos {
        let elems = element_count(t.shape.dims()).ok_or_else(|| {
            corrupt(format!(
                "tensor '{name}' has shape {:?}, more elements than this machine can address",
                t.shape.dims()
            ))
        })?;
        let block = t.ggml_dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(corrupt(format!(
                "tensor '{name}' has {elems} elements, not a multiple of the {} block size {block}",
                dtype_name(t.ggml_dtype)
            )));
        }
        let Some(bytes) = (elems / block).checked_mul(t.ggml_dtype.type_size() as u64) else {
            return Err(corrupt(format!(
                "tensor '{name}' has shape {:?}, too large to store",
                t.shape.dims()
            )));
        };
        let end = content
            .tensor_data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= file_size => {}
            _ => {
                return Err(corrupt(format!(
                    "tensor '{name}' needs bytes up to {} but the file has only {file_size} (truncated download?)",
                    end.map_or("overflow".to_string(), |e| e.to_string())
                )));
            }
        }
    }
    Ok(content)
}

/// An opened, validated GGUF file: the parsed header plus a handle to read tensors.
pub(crate) struct GgufFile {
    pub path: PathBuf,
    pub file_size: u64,
    pub content: Content,
    reader: BufReader<File>,
    /// The whole file mapped read-only, made on the first [`GgufFile::mapped`] call.
    map: Option<Arc<Mmap>>,
}

impl GgufFile {
    /// Open `path` and validate its header: magic, parseable metadata, every tensor's
    /// data inside the file.
    ///
    /// Errors: [`Error::Io`], [`Error::BadMagic`], [`Error::Corrupt`].
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let content = read_header(&mut reader, file_size, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file_size,
            content,
            reader,
            map: None,
        })
    }

    /// Tensor `name`'s format and raw bytes inside the memory-mapped file, for weights the
    /// CPU kernels read in place: the model then holds each weight once, as page cache
    /// shared with other processes, instead of a heap copy made from a read buffer (which
    /// also briefly doubled the largest tensor at load time).
    ///
    /// Like llama.cpp's default `mmap`, this assumes the file is not modified while the
    /// model is loaded. The byte range was checked against the file size at `open`.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Corrupt`] (wrong shape), [`Error::Io`].
    pub fn mapped(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(GgmlDType, Arc<Mmap>, Range<usize>)> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            });
        };
        if info.shape.dims() != shape {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                ),
            });
        }
        let (dtype, offset) = (info.ggml_dtype, info.offset);
        let bytes = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let map = match &self.map {
            Some(m) => Arc::clone(m),
            None => {
                // SAFETY: read-only mapping of a file we do not write; see the doc comment
                // for the (llama.cpp-equivalent) assumption that nobody else does.
                let m =
                    unsafe { Mmap::map(self.reader.get_ref()) }.map_err(|source| Error::Io {
                        path: self.path.clone(),
                        source,
                    })?;
                let m = Arc::new(m);
                self.map = Some(Arc::clone(&m));
                m
            }
        };
        let start = (self.content.tensor_data_offset + offset) as usize;
        let range = start..start + bytes;
        if range.end > map.len() {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor '{name}' ends past the end of the file"),
            });
        }
        Ok((dtype, map, range))
    }

    /// `general.architecture` as a supported family.
    ///
    /// Errors: [`Error::Metadata`] when missing, [`Error::UnsupportedArchitecture`].
    pub fn architecture(&self) -> Result<Architecture> {
        let name =
            meta_str(&self.content, "general.architecture").ok_or_else(|| Error::Metadata {
                path: self.path.clone(),
                key: "general.architecture".into(),
                reason: "missing or not a string".into(),
            })?;
        Architecture::from_gguf_name(name).ok_or_else(|| Error::UnsupportedArchitecture {
            path: self.path.clone(),
            arch: name.to_string(),
        })
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Read tensor `name`, checking its shape (dims in row-major order) when given.
    ///
    /// Errors: [`Error::MissingTensor`], [`Error::Corrupt`] (wrong shape, unreadable data).
    pub fn tensor(
        &mut self,
        name: &str,
        shape: Option<&[usize]>,
        device: &Device,
    ) -> Result<QTensor> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            });
        };
        if let Some(shape) = shape
            && info.shape.dims() != shape
        {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                reason: format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    info.shape.dims()
                ),
            });
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor '{name}': {}", first_line(&e)),
            })
    }

    /// Summarise the file.
    pub fn info(&self) -> GgufInfo {
        summarise(&self.path, self.file_size, &self.content)
    }
}

/// Summarise a validated header (see [`read_header`]) of a file of `file_size` bytes.
fn summarise(path: &Path, file_size: u64, c: &Content) -> GgufInfo {
    let architecture = meta_str(c, "general.architecture")
        .unwrap_or("")
        .to_string();
    let (config, config_error) = match Architecture::from_gguf_name(&architecture)
        .map(|a| ModelConfig::from_gguf(path, c, a))
    {
        Some(Ok(config)) => (Some(config), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let mut tensors: Vec<TensorInfo> = c
        .tensor_infos
        .iter()
        .map(|(name, t)| {
            let elems = t.shape.elem_count() as u64;
            TensorInfo {
                name: name.clone(),
                dtype: dtype_name(t.ggml_dtype).to_string(),
                shape: t.shape.dims().to_vec(),
                offset: c.tensor_data_offset + t.offset,
                bytes: elems / t.ggml_dtype.block_size() as u64 * t.ggml_dtype.type_size() as u64,
            }
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut tensor_types: BTreeMap<String, TypeCount> = BTreeMap::new();
    let mut parameter_count = 0u64;
    for t in &tensors {
        // `open` checked that each product fits; the sums saturate.
        let params = element_count(&t.shape).unwrap_or(u64::MAX);
        parameter_count = parameter_count.saturating_add(params);
        let e = tensor_types.entry(t.dtype.clone()).or_insert(TypeCount {
            tensors: 0,
            params: 0,
            bytes: 0,
        });
        e.tensors += 1;
        e.params = e.params.saturating_add(params);
        e.bytes = e.bytes.saturating_add(t.bytes);
    }
    let quantization = tensor_types
        .iter()
        .max_by_key(|(_, c)| c.params)
        .map_or_else(|| "none".to_string(), |(k, _)| k.clone());
    let file_type = crate::config::meta_usize(c, "general.file_type")
        .and_then(file_type_name)
        .map(str::to_string);
    let chat_template = meta_str(c, "tokenizer.chat_template").map(str::to_string);
    let metadata = c
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect();
    GgufInfo {
        path: path.to_path_buf(),
        file_size,
        architecture,
        name: meta_str(c, "general.name").map(str::to_string),
        config,
        config_error,
        parameter_count,
        quantization,
        file_type,
        tensor_types,
        has_chat_template: chat_template.is_some(),
        chat_template,
        metadata,
        tensors,
    }
}

impl GgufInfo {
    /// Read and validate the header of `path` without loading the weights.
    ///
    /// Errors: as [`crate::Model::load`] for a bad file; an unsupported architecture is
    /// not an error here (`config` is `None`).
    pub fn read(path: &Path) -> Result<Self> {
        Ok(GgufFile::open(path)?.info())
    }

    /// [`GgufInfo::read`] of a file held in memory (for fuzzing, and for callers that
    /// already hold the bytes); `path` only names the file in errors and in
    /// [`GgufInfo::path`].
    ///
    /// Errors: as [`GgufInfo::read`], less [`Error::Io`] for the file itself.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let size = bytes.len() as u64;
        let content = read_header(&mut std::io::Cursor::new(bytes), size, path)?;
        Ok(summarise(path, size, &content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LoadOptions, Model};
    use candle_core::Tensor;
    use candle_core::quantized::gguf_file;

    fn smollm() -> PathBuf {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
            .join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            p.exists(),
            "{} is missing: run scripts/fetch-models",
            p.display()
        );
        p
    }

    fn load_err(path: &Path) -> Error {
        match Model::load(path, &LoadOptions::default()) {
            Ok(_) => panic!("{} loaded but should not", path.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = std::fs::read(smollm()).expect("read model");
        // Cut in the tensor data, and in the header.
        for (name, len) in [
            ("half.gguf", bytes.len() / 2),
            ("head.gguf", 5000),
            ("last.gguf", bytes.len() - 1),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes[..len]).expect("write");
            let e = load_err(&p);
            assert!(matches!(e, Error::Corrupt { .. }), "{name}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(name), "{msg}");
            assert!(msg.contains("truncated"), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
            // model info refuses it too.
            assert!(GgufInfo::read(&p).is_err());
        }
    }

    #[test]
    fn wrong_magic_and_empty_file_are_clear_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = std::fs::read(smollm()).expect("read model");
        bytes.truncate(1 << 16);
        bytes[..4].copy_from_slice(b"GGML");
        let p = dir.path().join("magic.gguf");
        std::fs::write(&p, &bytes).expect("write");
        let e = load_err(&p);
        assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
        assert!(
            e.to_string().contains("magic.gguf") && e.to_string().contains("not a GGUF"),
            "{e}"
        );
        let p = dir.path().join("empty.gguf");
        std::fs::write(&p, b"").expect("write");
        assert!(matches!(load_err(&p), Error::BadMagic { .. }));
        let p = dir.path().join("missing.gguf");
        let e = load_err(&p);
        assert!(
            matches!(e, Error::Io { .. }) && e.to_string().contains("missing.gguf"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = std::fs::read(smollm()).expect("read model");
        // The value of general.architecture: key, u32 type 8 (string), u64 length 5, "llama".
        let key = b"general.architecture";
        let at = bytes
            .windows(key.len())
            .position(|w| w == key)
            .expect("key present");
        let value = at + key.len() + 4 + 8;
        assert_eq!(&bytes[value..value + 5], b"llama");
        bytes[value..value + 5].copy_from_slice(b"mamba");
        let p = dir.path().join("mamba.gguf");
        std::fs::write(&p, &bytes).expect("write");
        let e = load_err(&p);
        assert!(matches!(e, Error::UnsupportedArchitecture { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("mamba.gguf") && msg.contains("'mamba'"),
            "{msg}"
        );
        // model info still describes the file.
        let info = GgufInfo::read(&p).expect("header is fine");
        assert_eq!(info.architecture, "mamba");
        assert!(info.config.is_none());
    }

    /// A tiny llama GGUF with the given tensors.
    fn synthetic(path: &Path, tensors: &[&str]) {
        synthetic_with(path, tensors, Vec::new());
    }

    /// [`synthetic`] with `extra` metadata (a key given twice: the later value wins).
    fn synthetic_with(path: &Path, tensors: &[&str], extra: Vec<(&str, Value)>) {
        let mut meta: Vec<(&str, Value)> = vec![
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", Value::U32(1)),
            ("llama.embedding_length", Value::U32(32)),
            ("llama.feed_forward_length", Value::U32(64)),
            ("llama.attention.head_count", Value::U32(4)),
            ("llama.attention.head_count_kv", Value::U32(2)),
            ("llama.context_length", Value::U32(64)),
        ];
        for (k, v) in extra {
            meta.retain(|(m, _)| *m != k);
            meta.push((k, v));
        }
        let dev = Device::Cpu;
        let qts: Vec<(String, QTensor)> = tensors
            .iter()
            .map(|name| {
                let shape: Vec<usize> = match *name {
                    "token_embd.weight" => vec![16, 32],
                    n if n.ends_with("norm.weight") => vec![32],
                    _ => vec![32, 32],
                };
                let t = Tensor::zeros(shape, candle_core::DType::F32, &dev).expect("zeros");
                (
                    name.to_string(),
                    QTensor::quantize(&t, GgmlDType::F32).expect("f32"),
                )
            })
            .collect();
        let mut f = File::create(path).expect("create");
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &meta_refs, &t_refs).expect("write gguf");
    }

    #[test]
    fn missing_tensor_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("tiny.gguf");
        synthetic(
            &p,
            &[
                "token_embd.weight",
                "output_norm.weight",
                "blk.0.attn_norm.weight",
            ],
        );
        let e = load_err(&p);
        assert!(
            matches!(e, Error::MissingTensor { ref name, .. } if name == "blk.0.attn_q.weight"),
            "{e:?}"
        );
        assert!(e.to_string().contains("tiny.gguf"), "{e}");
        let p = dir.path().join("noembd.gguf");
        synthetic(&p, &["output_norm.weight"]);
        let e = load_err(&p);
        assert!(
            matches!(e, Error::MissingTensor { ref name, .. } if name == "token_embd.weight"),
            "{e:?}"
        );
    }

    #[test]
    fn wrong_tensor_shape_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("shape.gguf");
        // attn_norm should be [32]; synthetic() gives other names [32, 32].
        synthetic(
            &p,
            &["token_embd.weight", "output_norm.weight", "blk.0.attn_norm"],
        );
        let e = load_err(&p);
        assert!(matches!(e, Error::MissingTensor { .. }), "{e:?}");
        let p = dir.path().join("shape2.gguf");
        synthetic(
            &p,
            &[
                "token_embd.weight",
                "output_norm.weight",
                "blk.0.attn_norm.weight",
                "blk.0.attn_q.weight",
                "blk.0.attn_k.weight",
            ],
        );
        let e = load_err(&p);
        // attn_k should be [16, 32] (2 kv heads of 8).
        assert!(
            matches!(e, Error::Corrupt { .. }) && e.to_string().contains("blk.0.attn_k.weight"),
            "{e:?}"
        );
    }

    #[test]
    fn info_describes_the_default_model() {
        let info = GgufInfo::read(&smollm()).expect("valid");
        assert_eq!(info.architecture, "llama");
        let c = info.config.as_ref().expect("supported");
        assert_eq!(
            (c.n_layer, c.hidden, c.n_head, c.n_kv_head),
            (30, 576, 9, 3)
        );
        assert!(c.tied_embeddings);
        assert!(info.has_chat_template);
        assert_eq!(info.quantization, "Q4_1");
        let n: usize = info.tensor_types.values().map(|t| t.tensors).sum();
        assert_eq!(n, info.tensors.len());
        assert!(info.parameter_count > 130_000_000 && info.parameter_count < 140_000_000);
        // Long arrays are summarised, not dumped.
        let tokens = info.metadata["tokenizer.ggml.tokens"]
            .as_str()
            .expect("summary string");
        assert!(tokens.starts_with("[49152 x"), "{tokens}");
    }

    /// A GGUF v3 file written byte by byte, for headers candle's writer cannot make:
    /// `meta` as (key, GGUF type id, value bytes); F32 `tensors` as (name, dims in GGUF
    /// order), all at offset 0; `data` zero bytes of tensor data.
    fn raw_gguf(
        meta: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, Vec<u64>)],
        data: usize,
    ) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        for (k, ty, v) in meta {
            string(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims) in tensors {
            string(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(0u32.to_le_bytes()); // F32
            b.extend(0u64.to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32) + data, 0);
        b
    }

    fn gguf_str(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    #[test]
    fn zero_or_odd_alignment_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let arch = ("general.architecture", 8, gguf_str("llama"));
        // candle's reader divided by it: a panic in `model info` and `generate`.
        for (i, (ty, value)) in [
            (4u32, 0u32.to_le_bytes().to_vec()),
            (4, 48u32.to_le_bytes().to_vec()),
            (5, (-32i32).to_le_bytes().to_vec()),
            (6, 32f32.to_le_bytes().to_vec()),
        ]
        .into_iter()
        .enumerate()
        {
            let p = dir.path().join(format!("align{i}.gguf"));
            let bytes = raw_gguf(
                &[arch.clone(), ("general.alignment", ty, value)],
                &[("t", vec![8])],
                32,
            );
            std::fs::write(&p, bytes).expect("write");
            for e in [
                GgufInfo::read(&p).map(|_| ()).expect_err("refused"),
                load_err(&p),
            ] {
                assert!(
                    matches!(e, Error::Metadata { ref key, .. } if key == "general.alignment"),
                    "{e:?}"
                );
            }
        }
        // A valid one after long metadata (a string array) is still found and used.
        let mut tokens = 8u32.to_le_bytes().to_vec();
        tokens.extend(2u64.to_le_bytes());
        tokens.extend(gguf_str("a"));
        tokens.extend(gguf_str("bc"));
        let p = dir.path().join("align64.gguf");
        let bytes = raw_gguf(
            &[
                arch.clone(),
                ("tokenizer.ggml.tokens", 9, tokens),
                ("general.alignment", 4, 64u32.to_le_bytes().to_vec()),
            ],
            &[("t", vec![8])],
            64,
        );
        std::fs::write(&p, bytes).expect("write");
        let info = GgufInfo::read(&p).expect("alignment 64 is valid");
        assert_eq!(info.tensors[0].offset % 64, 0);
    }

    #[test]
    fn from_bytes_reads_like_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("tiny.gguf");
        synthetic(&p, &["token_embd.weight", "output_norm.weight"]);
        let bytes = std::fs::read(&p).expect("read");
        let from_file = GgufInfo::read(&p).expect("valid");
        let from_bytes = GgufInfo::from_bytes(&bytes, &p).expect("valid");
        assert_eq!(
            serde_json::to_value(&from_file).expect("json"),
            serde_json::to_value(&from_bytes).expect("json")
        );
        let e = GgufInfo::from_bytes(&bytes[..bytes.len() - 1], &p).expect_err("truncated");
        assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
        let e = GgufInfo::from_bytes(b"GG", &p).expect_err("short");
        assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    }

    #[test]
    fn shapes_whose_size_wraps_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 4 x 2^40 elements and 2^32 x 2^32: the products wrapped to 0, and `model info`
        // reported "parameters 0, bytes 0".
        for dims in [vec![1u64 << 40; 4], vec![1 << 32, 1 << 32]] {
            let p = dir.path().join("wrap.gguf");
            let bytes = raw_gguf(
                &[("general.architecture", 8, gguf_str("llama"))],
                &[("t", dims.clone())],
                32,
            );
            std::fs::write(&p, bytes).expect("write");
            let e = GgufInfo::read(&p).map(|_| ()).expect_err("refused");
            assert!(
                matches!(e, Error::Corrupt { ref reason, .. } if reason.contains("more elements")),
                "{dims:?}: {e:?}"
            );
        }
    }

    #[test]
    fn unusable_hyper_parameters_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("params.gguf");
        let tensors = ["token_embd.weight", "output_norm.weight"];
        for (key, value) in [
            // NaN gave empty output, 0 garbage; both exited 0.
            (
                "llama.attention.layer_norm_rms_epsilon",
                Value::F32(f32::NAN),
            ),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(0.0)),
            ("llama.rope.freq_base", Value::F32(0.0)),
            ("llama.rope.freq_base", Value::F32(f32::INFINITY)),
            ("llama.rope.freq_base", Value::String("x".into())),
            // Accepted and ignored.
            ("llama.rope.dimension_count", Value::U32(0)),
            ("llama.vocab_size", Value::U32(0)),
        ] {
            synthetic_with(&p, &tensors, vec![(key, value.clone())]);
            let e = load_err(&p);
            assert!(
                matches!(e, Error::Metadata { key: ref k, .. } if k == key),
                "{key} = {value:?}: {e:?}"
            );
            let info = GgufInfo::read(&p).expect("header reads");
            assert!(info.config.is_none());
            assert!(
                info.config_error
                    .as_deref()
                    .is_some_and(|r| r.contains(key)),
                "{:?}",
                info.config_error
            );
        }
        // The values the real models carry are accepted.
        synthetic_with(
            &p,
            &tensors,
            vec![
                ("llama.rope.dimension_count", Value::U32(8)),
                ("llama.vocab_size", Value::U32(16)),
                ("llama.rope.freq_base", Value::F32(100_000.0)),
            ],
        );
        let info = GgufInfo::read(&p).expect("header reads");
        assert!(info.config.is_some(), "{:?}", info.config_error);
    }
}
