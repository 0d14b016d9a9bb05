//! Refusal-lab runs found on disk, for `GET /api/lab/runs[/{id}]` and for steering in
//! `/v1/chat/completions`. A run is a directory holding `report.json` (written by
//! `overseer refusal run`); it is looked for directly in, or one level below, each root
//! (`DATA/lab`, `DATA/refusal`, `DATA/runs` and any extra roots given). Runs and plots are
//! only ever found by listing, never by joining a client's string onto a path, so no id
//! can reach outside the roots.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};

use crate::security::safe_name;

/// Largest report.json / report.md read (bytes).
const MAX_REPORT_BYTES: u64 = 16 * 1024 * 1024;

/// One run on disk.
#[derive(Debug, Clone)]
pub(crate) struct LabRun {
    pub id: String,
    pub dir: PathBuf,
    pub modified: u64,
}

/// Where runs are looked for.
#[derive(Debug, Clone)]
pub(crate) struct LabRuns {
    roots: Vec<PathBuf>,
}

impl LabRuns {
    pub fn new(data_dir: &Path, extra_roots: &[PathBuf]) -> Self {
        let mut roots: Vec<PathBuf> = ["lab", "refusal", "runs"]
            .iter()
            .map(|d| data_dir.join(d))
            .collect();
        roots.extend(extra_roots.iter().cloned());
        LabRuns { roots }
    }

    /// Every run, newest first. Directory names that are not safe ids are skipped; the
    /// first run with a given id wins.
    pub fn list(&self) -> Vec<LabRun> {
        let mut runs: Vec<LabRun> = Vec::new();
        for root in &self.roots {
            if root.join("report.json").is_file() {
                push_run(&mut runs, root);
            }
            for dir in subdirs(root) {
                if dir.join("report.json").is_file() {
                    push_run(&mut runs, &dir);
                } else {
                    for sub in subdirs(&dir) {
                        if sub.join("report.json").is_file() {
                            push_run(&mut runs, &sub);
                        }
                    }
                }
            }
        }
        runs.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.id.cmp(&b.id)));
        runs
    }

    /// The run with this id, if listed.
    pub fn find(&self, id: &str) -> Option<LabRun> {
        if !safe_name(id) {
            return None;
        }
        self.list().into_iter().find(|r| r.id == id)
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn push_run(runs: &mut Vec<LabRun>, dir: &Path) {
    let Some(id) = dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    if !safe_name(id) || runs.iter().any(|r| r.id == id) {
        return;
    }
    let modified = std::fs::metadata(dir.join("report.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    runs.push(LabRun {
        id: id.to_string(),
        dir: dir.to_path_buf(),
        modified,
    });
}

fn read_bounded(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_REPORT_BYTES {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

impl LabRun {
    pub fn report(&self) -> Value {
        match read_bounded(&self.dir.join("report.json")).map(|s| serde_json::from_str(&s)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                tracing::warn!(run = %self.id, error = %e, "report.json is not valid JSON");
                Value::Null
            }
            None => Value::Null,
        }
    }

    /// SVG plots: `*.svg` in the run directory and in its `plots/` folder, by file name.
    pub fn plots(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for dir in [self.dir.clone(), self.dir.join("plots")] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("svg")))
                .collect();
            files.sort();
            for p in files {
                if let Some(name) = p.file_name().and_then(|n| n.to_str())
                    && safe_name(name)
                    && !out.iter().any(|(n, _)| n == name)
                {
                    out.push((name.to_string(), p.clone()));
                }
            }
        }
        out
    }

    pub fn plot(&self, name: &str) -> Option<PathBuf> {
        if !safe_name(name) {
            return None;
        }
        self.plots()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    /// The list entry: id, model, headline numbers and plot URLs.
    pub fn summary(&self) -> Value {
        let report = self.report();
        let pick = |k: &str| report.get(k).cloned().unwrap_or(Value::Null);
        json!({
            "id": self.id,
            "modified": self.modified,
            "model": pick("model"),
            "selected": pick("selected"),
            "kl": pick("kl"),
            "baseline": pick("baseline"),
            "ablation": pick("ablation"),
            "addition": pick("addition"),
            "plots": self.plot_entries(),
        })
    }

    fn plot_entries(&self) -> Vec<Value> {
        self.plots()
            .into_iter()
            .map(|(name, _)| {
                json!({"name": name, "url": format!("/api/lab/runs/{}/plots/{}", self.id, name)})
            })
            .collect()
    }

    /// The detail: the summary plus the whole report, its markdown and example completions.
    pub fn detail(&self) -> Value {
        let report = self.report();
        let mut v = self.summary();
        let examples = find_examples(&report);
        v["report"] = report;
        v["report_md"] =
            read_bounded(&self.dir.join("report.md")).map_or(Value::Null, Value::String);
        v["examples"] = examples;
        v
    }
}

/// Example completions in the report: the first array of objects found under a key named
/// like `examples` or `completions` (searched two levels deep).
fn find_examples(report: &Value) -> Value {
    fn is_examples_key(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        k.contains("example") || k.contains("completion")
    }
    fn search(v: &Value, depth: usize) -> Option<Value> {
        let obj = v.as_object()?;
        for (k, val) in obj {
            if is_examples_key(k) {
                match val {
                    Value::Array(a) if a.iter().all(Value::is_object) && !a.is_empty() => {
                        return Some(val.clone());
                    }
                    Value::Object(_) => return Some(val.clone()),
                    _ => {}
                }
            }
        }
        if depth == 0 {
            return None;
        }
        obj.values().find_map(|val| search(val, depth - 1))
    }
    search(report, 2).unwrap_or(Value::Array(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_and_ids_cannot_escape() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path();
        let run = data.join("lab").join("qwen-run");
        std::fs::create_dir_all(run.join("plots")).expect("mkdir");
        std::fs::write(
            run.join("report.json"),
            r#"{"model":"m","examples":[{"instruction":"x"}]}"#,
        )
        .expect("write");
        std::fs::write(run.join("plots").join("layers.svg"), "<svg/>").expect("write");
        std::fs::write(run.join("rates.svg"), "<svg/>").expect("write");
        // A directory without report.json is not a run.
        std::fs::create_dir_all(data.join("lab").join("empty")).expect("mkdir");
        let labs = LabRuns::new(data, &[]);
        let runs = labs.list();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].id, "qwen-run");
        let names: Vec<String> = runs[0].plots().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["rates.svg", "layers.svg"]);
        assert!(labs.find("../lab/qwen-run").is_none());
        assert!(labs.find("empty").is_none());
        assert!(runs[0].plot("../report.json").is_none());
        assert!(runs[0].plot("report.json").is_none());
        let d = runs[0].detail();
        assert_eq!(d["examples"][0]["instruction"], "x");
        assert_eq!(d["model"], "m");
    }
}
