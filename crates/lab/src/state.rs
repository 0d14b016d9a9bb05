//! Resumable run state: one checkpoint file per completed stage under `OUT/state/`.
//!
//! Every file is written atomically (temp file + rename), so a killed run leaves
//! either a whole checkpoint or none. `state/config.json` records the run's
//! configuration; resuming with a different one is refused rather than mixing
//! results. Stages that take long (candidate scoring) append one JSON line per
//! finished item to a `.jsonl` file and skip those items on resume; a torn last line
//! (killed mid-write) is ignored.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Write `bytes` to `path` via a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// The checkpoint folder of a run.
#[derive(Debug, Clone)]
pub struct RunState {
    dir: PathBuf,
}

impl RunState {
    /// Open (creating) `out/state`, checking or recording `config`. With `restart`,
    /// earlier checkpoints are removed first.
    pub fn open<C: Serialize>(out: &Path, config: &C, restart: bool) -> Result<RunState> {
        let dir = out.join("state");
        if restart && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let cfg = serde_json::to_value(config)?;
        let path = dir.join("config.json");
        if path.exists() {
            let old: serde_json::Value = read_json(&path)?;
            if old != cfg {
                let detail = diff_keys(&old, &cfg);
                return Err(Error::StateMismatch {
                    dir: out.to_path_buf(),
                    detail,
                });
            }
        } else {
            write_atomic(&path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
        }
        Ok(RunState { dir })
    }

    /// Path of a checkpoint file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A finished stage's checkpoint, if any.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Record a finished stage.
    pub fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_atomic(&self.path(name), serde_json::to_string(value)?.as_bytes())
    }

    /// Items already appended to a `.jsonl` stage (torn or unreadable lines skipped).
    pub fn load_lines<T: DeserializeOwned>(&self, name: &str) -> Result<Vec<T>> {
        let path = self.path(name);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Append one finished item to a `.jsonl` stage and flush it to disk.
    pub fn append_line<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.path(name);
        let mut line = serde_json::to_string(value)?;
        line.push('\n');
        // A torn previous line (killed mid-write) must not swallow this one.
        let needs_newline = std::fs::read(&path)
            .map(|b| !b.is_empty() && b.last() != Some(&b'\n'))
            .unwrap_or(false);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        if needs_newline {
            f.write_all(b"\n").map_err(Error::io(&path))?;
        }
        f.write_all(line.as_bytes()).map_err(Error::io(&path))?;
        f.sync_data().map_err(Error::io(&path))
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::BadCheckpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn diff_keys(old: &serde_json::Value, new: &serde_json::Value) -> String {
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .collect();
            keys.sort();
            keys.dedup();
            let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
            format!("differs in {}", keys.join(", "))
        }
        _ => "differs".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Item {
        i: usize,
    }

    #[test]
    fn checkpoints_resume_and_config_is_checked() {
        let out = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({"n_train": 4, "seed": 1});
        let s = RunState::open(out.path(), &cfg, false).unwrap();
        assert!(s.load::<Item>("a.json").unwrap().is_none());
        s.save("a.json", &Item { i: 3 }).unwrap();
        s.append_line("b.jsonl", &Item { i: 0 }).unwrap();
        // A torn line from a killed writer is skipped, later lines still count.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(s.path("b.jsonl"))
            .unwrap();
        f.write_all(b"{\"i\": 1").unwrap();
        drop(f);
        s.append_line("b.jsonl", &Item { i: 2 }).unwrap();

        let s2 = RunState::open(out.path(), &cfg, false).unwrap();
        assert_eq!(s2.load::<Item>("a.json").unwrap(), Some(Item { i: 3 }));
        let items: Vec<Item> = s2.load_lines("b.jsonl").unwrap();
        assert_eq!(items, vec![Item { i: 0 }, Item { i: 2 }]);

        let other = serde_json::json!({"n_train": 8, "seed": 1});
        let err = RunState::open(out.path(), &other, false).unwrap_err();
        assert!(err.to_string().contains("n_train"), "{err}");
        let s3 = RunState::open(out.path(), &other, true).unwrap();
        assert!(s3.load::<Item>("a.json").unwrap().is_none());
    }
}
