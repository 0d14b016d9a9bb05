//! Prompt sets: the shared harmful/harmless splits and user-supplied files.
//!
//! Accepts a JSON list (of `{"instruction": ...}` objects or plain strings), JSONL (one
//! such value per line) or plain text (one prompt per line). Sampling is a seeded
//! shuffle, so the same seed always picks the same prompts on every machine.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde_json::Value;

use crate::{Error, Result};

/// The default prompt folder relative to a checkout: `../shared/data/refusal`.
pub const DEFAULT_DATA_SUBDIR: &str = "refusal";

/// Which split of the shared data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Path of `harmful_<split>.json` / `harmless_<split>.json` in `dir`.
pub fn split_path(dir: &Path, harmful: bool, split: Split) -> PathBuf {
    let kind = if harmful { "harmful" } else { "harmless" };
    dir.join(format!("{kind}_{}.json", split.name()))
}

fn instruction_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("instruction")
            .or_else(|| o.get("prompt"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// Parse prompts from text (see the module docs for the accepted formats).
/// `path` is only used in error messages. Empty prompts are dropped.
pub fn parse_prompts(text: &str, path: &Path) -> Result<Vec<String>> {
    let bad = |message: String| Error::BadPrompts {
        path: path.to_path_buf(),
        message,
    };
    let trimmed = text.trim_start();
    let mut out = Vec::new();
    if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let items = v.as_array().expect("starts with '[' and parsed");
        for (i, item) in items.iter().enumerate() {
            let s = instruction_of(item).ok_or_else(|| {
                bad(format!(
                    "item {i} is neither a string nor an object with an \"instruction\""
                ))
            })?;
            out.push(s);
        }
    } else if trimmed.starts_with('{') {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| bad(format!("line {}: invalid JSON: {e}", i + 1)))?;
            let s = instruction_of(&v)
                .ok_or_else(|| bad(format!("line {}: no \"instruction\" field", i + 1)))?;
            out.push(s);
        }
    } else {
        out.extend(text.lines().map(str::to_owned));
    }
    out.retain(|s| !s.trim().is_empty());
    Ok(out)
}

/// Read prompts from a file (JSON list, JSONL or text lines).
pub fn load_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let prompts = parse_prompts(&text, path)?;
    if prompts.is_empty() {
        return Err(Error::BadPrompts {
            path: path.to_path_buf(),
            message: "no prompts in file".into(),
        });
    }
    Ok(prompts)
}

/// A seeded random sample of at most `n` prompts (order shuffled; deterministic).
pub fn sample(prompts: &[String], n: usize, seed: u64) -> Vec<String> {
    let mut idx: Vec<usize> = (0..prompts.len()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    idx.shuffle(&mut rng);
    idx.truncate(n);
    idx.into_iter().map(|i| prompts[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_formats() {
        let p = Path::new("x");
        let json = r#"[{"instruction": "a", "category": null}, "b"]"#;
        assert_eq!(parse_prompts(json, p).unwrap(), vec!["a", "b"]);
        let jsonl = "{\"instruction\": \"a\"}\n\n{\"prompt\": \"b\"}\n";
        assert_eq!(parse_prompts(jsonl, p).unwrap(), vec!["a", "b"]);
        let text = "first line\n\nsecond line\n";
        assert_eq!(
            parse_prompts(text, p).unwrap(),
            vec!["first line", "second line"]
        );
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let p = Path::new("x.jsonl");
        let err = parse_prompts("{\"instruction\": \"a\"}\n{oops\n", p).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse_prompts("[{\"category\": 1}]", p).unwrap_err();
        assert!(err.to_string().contains("item 0"), "{err}");
        assert!(parse_prompts("[1, 2", p).is_err());
    }

    #[test]
    fn sampling_is_seeded_and_bounded() {
        let all: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
        let a = sample(&all, 10, 7);
        assert_eq!(a, sample(&all, 10, 7));
        assert_ne!(a, sample(&all, 10, 8));
        assert_eq!(a.len(), 10);
        assert_eq!(sample(&all, 100, 1).len(), 50);
    }

    #[test]
    fn shared_splits_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/refusal");
        let harmful = load_prompts(&split_path(&dir, true, Split::Train))
            .expect("shared data at ../shared/data/refusal");
        assert!(harmful.len() >= 128, "{}", harmful.len());
    }
}
