//! The on-disk layout of one index and its crash-safe commit protocol.
//!
//! ```text
//! DATA_DIR/index/
//!   index.json            format version, embedder name and dimension (written once)
//!   ingest.lock           held (OS file lock) by the one running ingest
//!   tantivy/              BM25 index, one tantivy document per chunk
//!   vectors.f32           append-only: one row of `dim` f32 per chunk
//!   chunks.idx            append-only: one `ChunkRec` per row
//!   chunks.txt            append-only: heading path + text of each chunk
//!   docs.idx, docs.jsonl  append-only: one record per document version
//!   alive-G.bin           generation G: bitmap of the rows that are live
//!   catalog-G.json        generation G: id -> hash, origin, rows (for incremental ingest)
//!   hnsw-G.bin            generation G: optional HNSW graph over the rows
//! ```
//!
//! Commit protocol: append to the shared files and write the generation files, fsync
//! them all, then commit tantivy with the [`Manifest`] as its commit payload. Tantivy
//! swaps its `meta.json` atomically, so that one rename is the commit point: a reader
//! always sees either the old manifest (whose byte lengths ignore anything appended
//! since) or the new one, whose files were durable before it existed. The next ingest
//! truncates the append-only files back to the committed lengths.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// On-disk format version; bump on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct IndexInfo {
    pub format: u32,
    pub embedder: String,
    pub dim: usize,
}

/// The commit payload: everything a reader needs to find generation `gen`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// Rows in vectors.f32 / chunks.idx (live or not).
    pub rows: u64,
    pub chunks_txt_bytes: u64,
    /// Records in docs.idx.
    pub doc_records: u64,
    pub docs_jsonl_bytes: u64,
    pub live_docs: u64,
    pub live_chunks: u64,
    pub hnsw: bool,
}

/// Fixed-size record of one chunk (row).
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub(crate) struct ChunkRec {
    pub doc: u32,
    pub chunk: u32,
    pub text_off: u64,
    pub heading_len: u32,
    pub text_len: u32,
    pub start: u32,
    pub end: u32,
}

/// Fixed-size record locating one document line in docs.jsonl.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub(crate) struct DocRec {
    pub off: u64,
    pub len: u64,
}

/// One line of docs.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredDoc {
    #[serde(flatten)]
    pub meta: crate::DocMeta,
    pub hash: String,
    pub origin: String,
    pub first_row: u64,
    pub n_chunks: u32,
}

/// catalog-G.json value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct CatalogEntry {
    pub hash: String,
    pub origin: String,
    pub doc: u64,
    pub first_row: u64,
    pub n_chunks: u32,
}

pub(crate) type Catalog = std::collections::BTreeMap<String, CatalogEntry>;

pub(crate) const VECTORS: &str = "vectors.f32";
pub(crate) const CHUNKS_IDX: &str = "chunks.idx";
pub(crate) const CHUNKS_TXT: &str = "chunks.txt";
pub(crate) const DOCS_IDX: &str = "docs.idx";
pub(crate) const DOCS_JSONL: &str = "docs.jsonl";
pub(crate) const INFO: &str = "index.json";
pub(crate) const LOCK: &str = "ingest.lock";
pub(crate) const TANTIVY: &str = "tantivy";

pub(crate) fn alive_name(g: u64) -> String {
    format!("alive-{g}.bin")
}
pub(crate) fn catalog_name(g: u64) -> String {
    format!("catalog-{g}.json")
}
pub(crate) fn hnsw_name(g: u64) -> String {
    format!("hnsw-{g}.bin")
}

/// The index folder inside a data directory.
pub(crate) fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

/// Read `index.json`: `None` if there is no index yet.
pub(crate) fn read_info(dir: &Path) -> Result<Option<IndexInfo>> {
    let path = dir.join(INFO);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    #[derive(Deserialize)]
    struct Probe {
        format: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(&bytes).map_err(|_| Error::IncompatibleVersion {
        dir: dir.to_path_buf(),
        found: "unreadable index.json".into(),
        expected: format!("format {FORMAT_VERSION}"),
    })?;
    let found = probe.format.and_then(|v| v.as_u64());
    if found != Some(u64::from(FORMAT_VERSION)) {
        return Err(Error::IncompatibleVersion {
            dir: dir.to_path_buf(),
            found: found.map_or("no format number".into(), |f| format!("format {f}")),
            expected: format!("format {FORMAT_VERSION}"),
        });
    }
    let info: IndexInfo = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some(info))
}

/// Write a small file atomically: temp file, fsync, rename, fsync the folder.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", dir, e))
}

/// Memory-map a file read-only, `None` when empty or absent.
pub(crate) fn map(path: &Path, min_len: u64) -> Result<Option<Mmap>> {
    if min_len == 0 {
        return Ok(None);
    }
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    if len < min_len {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{len} bytes, the manifest says at least {min_len}"),
        });
    }
    // SAFETY: the bytes below `min_len` belong to committed generations and are never
    // rewritten: writers only append past them or truncate back to them.
    let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io("mmap", path, e))?;
    Ok(Some(m))
}

/// An append-only file opened for writing, truncated to its committed length.
pub(crate) struct Appender {
    path: PathBuf,
    file: std::io::BufWriter<File>,
    pub len: u64,
}

impl Appender {
    pub fn open(path: PathBuf, committed: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        if len < committed {
            return Err(Error::Corrupt {
                path,
                reason: format!("{len} bytes, the manifest says {committed}"),
            });
        }
        // Drop whatever a killed ingest left past the commit point.
        file.set_len(committed)
            .map_err(|e| Error::io("truncate", &path, e))?;
        use std::io::Seek;
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(committed))
            .map_err(|e| Error::io("seek", &path, e))?;
        Ok(Self {
            path,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            len: committed,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }
}

/// Bitmap helpers over `u64` words.
pub(crate) fn bit_get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
}
pub(crate) fn bit_set(bits: &mut Vec<u64>, i: usize, v: bool) {
    if bits.len() <= i / 64 {
        bits.resize(i / 64 + 1, 0);
    }
    if v {
        bits[i / 64] |= 1 << (i % 64);
    } else {
        bits[i / 64] &= !(1 << (i % 64));
    }
}

pub(crate) fn read_bits(path: &Path) -> Result<Vec<u64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    if bytes.len() % 8 != 0 {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            reason: "bitmap length is not a multiple of 8".into(),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}

pub(crate) fn bits_bytes(bits: &[u64]) -> Vec<u8> {
    bits.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appender_truncates_uncommitted_tail() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("f");
        std::fs::write(&p, b"committedGARBAGE").expect("write");
        let mut a = Appender::open(p.clone(), 9).expect("open");
        a.write(b"+new").expect("w");
        a.sync().expect("sync");
        assert_eq!(std::fs::read(&p).expect("read"), b"committed+new");
        assert!(matches!(Appender::open(p, 100), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn info_version_check() {
        let d = tempfile::tempdir().expect("tmp");
        assert!(read_info(d.path()).expect("none").is_none());
        std::fs::write(
            d.path().join(INFO),
            r#"{"format": 999, "embedder": "x", "dim": 3}"#,
        )
        .expect("w");
        let e = read_info(d.path()).unwrap_err().to_string();
        assert!(e.contains("re-ingest") && e.contains("format 999"), "{e}");
    }

    #[test]
    fn bits() {
        let mut b = Vec::new();
        bit_set(&mut b, 130, true);
        assert!(bit_get(&b, 130) && !bit_get(&b, 129) && !bit_get(&b, 10_000));
        bit_set(&mut b, 130, false);
        assert!(!bit_get(&b, 130));
    }
}
