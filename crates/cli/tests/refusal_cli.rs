//! `overseer refusal ...` end to end on SmolLM2-135M with a handful of prompts and few
//! tokens: the run writes the report fields other checks rely on, resumes from its
//! checkpoints, and eval / export-control-vector / orthogonalize work on its output.

use std::path::{Path, PathBuf};
use std::process::Command;

fn models() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).to_path_buf()
}

fn smollm2() -> PathBuf {
    let p = models().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-models",
        p.display()
    );
    p
}

fn overseer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_overseer"));
    c.env_remove("OVERSEER_MODEL");
    c
}

fn ok(c: &mut Command) -> String {
    let out = c.output().expect("overseer runs");
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn refusal_run_eval_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let model = smollm2();
    let args = |c: &mut Command| {
        c.args(["refusal", "run", "--model"])
            .arg(&model)
            .arg("--out")
            .arg(&out)
            .args([
                "--n-train",
                "4",
                "--n-val",
                "3",
                "--n-test",
                "2",
                "--max-new-tokens",
                "6",
                "--batch",
                "4",
                "--no-filter",
                "--last-position-only",
                "--addition-coefs",
                "1",
                // Score only layers 0..3 (of 30) to keep CI short.
                "--prune-layers",
                "0.9",
            ]);
    };
    let mut c = overseer();
    args(&mut c);
    ok(&mut c);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for k in ["model", "kl"] {
        assert!(report.get(k).is_some(), "{k} missing");
    }
    let layer = report["selected"]["layer"]
        .as_u64()
        .expect("selected.layer");
    assert!(
        layer < 3,
        "layer {layer} is in the pruned layers (>= 3 of 30)"
    );
    assert_eq!(report["selected"]["position"], -1);
    for k in [
        "baseline.harmful_refusal_rate",
        "baseline.harmless_refusal_rate",
        "ablation.harmful_refusal_rate",
        "ablation.harmless_refusal_rate",
        "addition.harmless_refusal_rate",
    ] {
        let (a, b) = k.split_once('.').unwrap();
        let v = report[a][b]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing"));
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    assert_eq!(report["candidates"].as_array().unwrap().len(), 3);
    for f in [
        "direction.safetensors",
        "report.md",
        "scores.svg",
        "rates.svg",
        "examples.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }

    // A resumed run reuses every checkpoint: same report, no new scoring.
    let before = std::fs::read_to_string(out.join("state/scores.jsonl")).unwrap();
    let mut c = overseer();
    args(&mut c);
    ok(&mut c);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(again["selected"], report["selected"]);
    assert_eq!(again["baseline"], report["baseline"]);
    assert_eq!(
        std::fs::read_to_string(out.join("state/scores.jsonl")).unwrap(),
        before
    );
    // A different configuration in the same directory is refused.
    let mut c = overseer();
    c.args(["refusal", "run", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .args(["--n-train", "5"]);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different configuration"));

    // eval --json on a JSONL prompt file.
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"instruction\": \"Say hello.\"}\n{\"instruction\": \"Name a color.\"}\n",
    )
    .unwrap();
    let mut c = overseer();
    c.args(["refusal", "eval", "--model"])
        .arg(&model)
        .arg("--direction")
        .arg(&out)
        .args(["--intervention", "ablate", "--prompts"])
        .arg(&prompts)
        .args(["--limit", "1", "--max-new-tokens", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&mut c)).unwrap();
    assert_eq!(v["n"], 1);
    assert!(v["refusal_rate"].as_f64().is_some() && v["mean_refusal_score"].as_f64().is_some());
    let item = &v["completions"][0];
    assert_eq!(item["instruction"], "Say hello.");
    assert!(item["completion"].is_string() && item["refused"].is_boolean());

    // Control vector: direction.<layer-1>.
    let cv = tmp.path().join("cv.gguf");
    let mut c = overseer();
    c.args(["refusal", "export-control-vector", "--direction"])
        .arg(&out)
        .arg("--out")
        .arg(&cv)
        .args(["--coef", "-1"]);
    if layer >= 2 {
        ok(&mut c);
        let bytes = std::fs::read(&cv).unwrap();
        let name = format!("direction.{}", layer - 1);
        assert!(
            bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} not in control vector"
        );
    } else {
        // llama.cpp cannot add to the input of layers 0 and 1.
        assert!(!c.output().unwrap().status.success());
    }

    // Bad input: a missing direction is a clear error.
    let mut c = overseer();
    c.args(["refusal", "export-control-vector", "--direction"])
        .arg(tmp.path().join("nope"))
        .arg("--out")
        .arg(&cv);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));

    // `chat --steer DIR:0` adds nothing, so its greedy reply equals plain chat's;
    // `--ablate DIR` loads the same direction and answers.
    let chat = |extra: &[&str]| -> String {
        use std::io::Write;
        let mut c = overseer();
        c.args(["chat", "--max-tokens", "12", "--model"])
            .arg(smollm2())
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().expect("overseer chat starts");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(b"Name a colour.\n")
            .expect("stdin accepts the message");
        let o = child.wait_with_output().expect("overseer chat ends");
        assert!(
            o.status.success(),
            "chat {extra:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let dir = out.to_str().expect("utf-8 temp path");
    let plain = chat(&[]);
    assert!(!plain.trim().is_empty());
    assert_eq!(chat(&["--steer", &format!("{dir}:0")]), plain);
    assert!(!chat(&["--ablate", dir]).trim().is_empty());
}
