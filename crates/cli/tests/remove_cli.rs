//! `overseer remove` end to end: ingest three small records with the real embedder,
//! remove one, and check search, the JSON summary, unknown ids and re-ingest.

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], data: &Path) -> Output {
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    assert!(
        Path::new(models)
            .join("all-minilm-l6-v2/model.safetensors")
            .exists(),
        "embedding model missing: run scripts/fetch-models"
    );
    Command::new(env!("CARGO_BIN_EXE_overseer"))
        .env("OVERSEER_MODELS_DIR", models)
        .env_remove("OVERSEER_DATA_DIR")
        .env_remove("OVERSEER_EMBEDDER")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run overseer")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn search_ids(data: &Path, q: &str, mode: &str) -> Vec<String> {
    let o = run(&["search", "--json", "--k", "5", "--mode", mode, q], data);
    assert!(o.status.success(), "search failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|h| h["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn remove_takes_documents_out_until_reingested() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let f = tmp.path().join("docs.jsonl");
    let recs = [
        (
            "corr1",
            "Corrigibility",
            "An agent that accepts shutdown and correction from its operators.",
        ),
        (
            "hack2",
            "Reward hacking",
            "Agents exploit misspecified reward functions in video games.",
        ),
        (
            "interp3",
            "Interpretability",
            "Circuits in vision models reveal curve detectors.",
        ),
    ];
    let text: String = recs
        .iter()
        .map(|(id, t, x)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "source": "test", "title": t, "text": x, "authors": []})
            )
        })
        .collect();
    std::fs::write(&f, text).expect("write");
    let fs = f.to_str().expect("utf8");
    let o = run(&["ingest", fs], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        search_ids(&data, "shutdown correction", "hybrid")[0],
        "corr1"
    );

    let o = run(&["remove", "--json", "corr1"], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["removed"][0]["id"], "corr1", "{v}");
    assert_eq!(v["docs"], 2, "{v}");
    for mode in ["bm25", "dense", "hybrid"] {
        let ids = search_ids(&data, "shutdown correction operators", mode);
        assert!(!ids.contains(&"corr1".to_string()), "{mode}: {ids:?}");
    }
    assert_eq!(
        search_ids(&data, "misspecified reward games", "hybrid")[0],
        "hack2"
    );

    // Unknown ids: the known one is still removed, the command fails naming the rest.
    let o = run(&["remove", "interp3", "nope"], &data);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("removed interp3") && e.contains("\"nope\""),
        "{e}"
    );
    let ids = search_ids(&data, "circuits curve detectors", "bm25");
    assert!(!ids.contains(&"interp3".to_string()), "{ids:?}");

    // Ingesting the source again brings both back.
    let o = run(&["ingest", "--json", fs], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(
        (v["added"].as_u64(), v["skipped"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        search_ids(&data, "shutdown correction", "hybrid")[0],
        "corr1"
    );
}
