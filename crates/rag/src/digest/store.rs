//! What digests keep in the data dir:
//!
//! ```text
//! DATA_DIR/digests/
//!   <id>.json          one saved digest (written to a temporary file, then renamed)
//!   watermark.json     the ingest sequence the last digest covered up to
//!   summaries.jsonl    summaries by item content, model and length (append-only)
//! ```
//!
//! A killed run leaves at most a temporary file or a torn last cache line behind;
//! both are ignored on the next read.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::digest::summary::{Length, Summary, VERSION};
use crate::{Error, Result};

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::DigestStore {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// The digests folder of a data dir.
pub fn digests_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("digests")
}

/// Where the last digest stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Watermark {
    /// Ingest sequence ([`overseer_index::Index::sequence`]) when that digest ran.
    pub sequence: u64,
    /// That digest's id.
    pub digest: String,
}

/// Summaries already written, by item content, model and length.
#[derive(Debug)]
pub struct SummaryCache {
    path: PathBuf,
    map: HashMap<String, Summary>,
}

#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    summary: Summary,
}

impl SummaryCache {
    /// Open (or start) the cache in `data_dir`.
    ///
    /// Errors: `DigestStore` when the file exists but cannot be read.
    pub fn open(data_dir: &Path) -> Result<SummaryCache> {
        let path = digests_dir(data_dir).join("summaries.jsonl");
        let mut map = HashMap::new();
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.map_err(|e| io_err(&path, e))?;
                    // A torn or foreign line is skipped: the summary is made again.
                    if let Ok(c) = serde_json::from_str::<CacheLine>(&line) {
                        map.insert(c.key, c.summary);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        Ok(SummaryCache { path, map })
    }

    /// The cache key of a summary.
    pub fn key(content_hash: &str, length: Length, model: &str) -> String {
        format!("v{VERSION}:{length:?}:{model}:{content_hash}")
    }

    pub fn get(&self, key: &str) -> Option<&Summary> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Add a summary (appended to the file at once).
    ///
    /// Errors: `DigestStore` on write failure.
    pub fn put(&mut self, key: String, summary: Summary) -> Result<()> {
        let dir = digests_dir_of(&self.path);
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let line = serde_json::to_string(&CacheLine {
            key: key.clone(),
            summary: summary.clone(),
        })
        .map_err(|e| io_err(&self.path, e))?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, e))?;
        // One write per line: a kill tears at most this line.
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| io_err(&self.path, e))?;
        self.map.insert(key, summary);
        Ok(())
    }
}

fn digests_dir_of(file: &Path) -> PathBuf {
    file.parent().map_or_else(PathBuf::new, Path::to_path_buf)
}

/// Write `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = digests_dir_of(path);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// The last digest's watermark, if any.
///
/// Errors: `DigestStore` when the file exists but is unreadable.
pub fn read_watermark(data_dir: &Path) -> Result<Option<Watermark>> {
    read_json(&digests_dir(data_dir).join("watermark.json"))
}

/// A JSON file read into `T`; `None` when there is no such file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Record that a digest covered everything up to `sequence`.
///
/// Errors: `DigestStore`.
pub fn write_watermark(data_dir: &Path, w: &Watermark) -> Result<()> {
    let path = digests_dir(data_dir).join("watermark.json");
    let bytes = serde_json::to_vec_pretty(w).map_err(|e| io_err(&path, e))?;
    write_atomic(&path, &bytes)
}

/// Whether `id` is a digest id this store could have written (letters, digits, `-`,
/// `_`, `T`, `Z`; no path separators).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Save a digest as `digests/<id>.json`; an existing id gets a `-2`, `-3`… suffix.
/// Returns the id it was saved under.
///
/// Errors: `DigestStore`.
pub fn save(data_dir: &Path, digest: &mut Digest) -> Result<String> {
    let dir = digests_dir(data_dir);
    let base = digest.id.clone();
    let mut k = 1;
    while dir.join(format!("{}.json", digest.id)).exists() {
        k += 1;
        digest.id = format!("{base}-{k}");
    }
    let path = dir.join(format!("{}.json", digest.id));
    let bytes = serde_json::to_vec(digest).map_err(|e| io_err(&path, e))?;
    write_atomic(&path, &bytes)?;
    Ok(digest.id.clone())
}

/// A saved digest, `None` when there is none with this id (or the id is malformed).
///
/// Errors: `DigestStore` when the file exists but is unreadable.
pub fn load(data_dir: &Path, id: &str) -> Result<Option<Digest>> {
    if !valid_id(id) {
        return Ok(None);
    }
    read_json(&digests_dir(data_dir).join(format!("{id}.json")))
}

/// What a list of digests shows of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestInfo {
    pub id: String,
    pub title: String,
    pub created: String,
    pub covers: String,
    pub items: usize,
}

/// Every saved digest, newest first (unreadable files are skipped).
///
/// Errors: `DigestStore` when the folder exists but cannot be listed.
pub fn list(data_dir: &Path) -> Result<Vec<DigestInfo>> {
    let dir = digests_dir(data_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir, e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if id == "watermark" || !valid_id(id) {
            continue;
        }
        if let Ok(Some(d)) = load(data_dir, id) {
            out.push(DigestInfo {
                id: d.id,
                title: d.title,
                created: d.created,
                covers: d.covers,
                items: d.items.len(),
            });
        }
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_survives_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = SummaryCache::open(dir.path()).unwrap();
        let s = Summary {
            sentences: vec!["A.".into()],
            fallback: false,
            copy_ratio: 0.0,
        };
        c.put(SummaryCache::key("h", Length::Short, "m"), s.clone())
            .unwrap();
        let path = digests_dir(dir.path()).join("summaries.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"key\": \"torn").unwrap();
        let c = SummaryCache::open(dir.path()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&SummaryCache::key("h", Length::Short, "m")), Some(&s));
        assert!(c.get(&SummaryCache::key("h", Length::Long, "m")).is_none());
    }

    #[test]
    fn ids_cannot_leave_the_folder() {
        assert!(valid_id("20261208T010203Z"));
        assert!(valid_id("20261208T010203Z-2"));
        assert!(!valid_id("../etc/passwd"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "../x").unwrap().is_none());
        assert!(list(dir.path()).unwrap().is_empty());
        assert!(read_watermark(dir.path()).unwrap().is_none());
    }
}
