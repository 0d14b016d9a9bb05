//! End-to-end tests of `overseer digest` on a small fixture corpus whose items each
//! clearly belong to one challenge of the agenda (or to none), with the real
//! all-MiniLM-L6-v2 embedder and, for summaries, SmolLM2.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn models() -> PathBuf {
    let m = Path::new(ROOT).join("models");
    for f in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "all-minilm-l6-v2/model.safetensors",
    ] {
        assert!(m.join(f).exists(), "{f} missing: run scripts/fetch-models");
    }
    m
}

fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_overseer"))
        .env_remove("OVERSEER_MODEL")
        .env_remove("OVERSEER_LLM_URL")
        .env_remove("OVERSEER_DATA_DIR")
        .env("OVERSEER_THREADS", "2")
        .env("OVERSEER_MODELS_DIR", models())
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run overseer")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// (id, date, title, text, the topic it clearly belongs to).
const ITEMS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "adv1",
        "2024-03-04",
        "Imperceptible perturbations fool image classifiers",
        "We construct adversarial examples: tiny perturbations of an input image, invisible to people, that make a neural network classifier output the wrong label with high confidence. Adversarial training on such perturbed images makes the classifier more robust to these attacks.",
        "3.5",
    ),
    (
        "interp1",
        "2024-03-05",
        "Reverse-engineering a circuit inside a transformer",
        "We use mechanistic interpretability to find the neurons and attention heads that implement a specific behaviour, trace the circuit through the network, and check that our explanation is faithful by ablating the components it names.",
        "3.4",
    ),
    (
        "gov1",
        "2024-03-06",
        "Regulating frontier AI: licensing and audits",
        "We propose a regulatory regime for the most capable AI systems: government licensing of large training runs, independent audits before deployment, and international coordination between governments so that no country races ahead with unsafe systems.",
        "4.5",
    ),
    (
        "rlhf1",
        "2024-03-07",
        "Learning a reward model from human preferences",
        "Humans compare pairs of agent behaviours and say which they prefer; we fit a reward model to these comparisons and train the agent with reinforcement learning from this human feedback, so it learns what people want without a hand-written reward.",
        "3.2",
    ),
    (
        "scale1",
        "2024-03-08",
        "Scaling laws for language models",
        "Test loss falls as a power law in parameters, dataset size and training compute over seven orders of magnitude. We use these scaling laws to forecast the performance of larger models and to choose the compute-optimal model size.",
        "2.3",
    ),
    (
        "cook1",
        "2024-03-09",
        "A slow-cooked tomato sauce <script>alert(1)</script>",
        "Simmer crushed tomatoes with garlic, olive oil and basil for three hours, stirring now and then, until the sauce is thick and sweet. Season with salt and serve over fresh pasta.",
        "other",
    ),
];

fn record(i: &(&str, &str, &str, &str, &str)) -> String {
    json!({
        "id": i.0, "source": "fixture", "title": i.2, "authors": ["A. Author"],
        "text": i.3, "url": format!("https://example.org/{}", i.0),
        "date_published": format!("{}T00:00:00Z", i.1), "tags": []
    })
    .to_string()
}

fn ingest(data: &Path, dir: &Path, name: &str, items: &[(&str, &str, &str, &str, &str)]) {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create");
    for i in items {
        writeln!(f, "{}", record(i)).expect("write");
    }
    ok(&run(data, &["ingest", p.to_str().expect("utf-8 path")]));
}

fn items_of(stdout: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(stdout).expect("digest JSON");
    v["items"].as_array().expect("items").clone()
}

#[test]
fn files_items_by_challenge_keeps_a_watermark_and_renders_safely() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    ingest(&data, tmp.path(), "a.jsonl", &ITEMS[..4]);

    // First cron run: everything ingested so far.
    let first = items_of(&ok(&run(
        &data,
        &["digest", "--no-summaries", "--format", "json"],
    )));
    assert_eq!(first.len(), 4);
    // Second: only what was ingested since.
    ingest(&data, tmp.path(), "b.jsonl", &ITEMS[4..]);
    let second = items_of(&ok(&run(
        &data,
        &["digest", "--no-summaries", "--format", "json"],
    )));
    let ids: Vec<&str> = second
        .iter()
        .map(|i| i["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"scale1") && ids.contains(&"cook1"));
    // Third: nothing new, said plainly, exit 0.
    let third = ok(&run(&data, &["digest", "--no-summaries"]));
    assert!(third.contains("Nothing new"), "{third}");

    // --all: every item, each under the topic it clearly belongs to; the watermark
    // stays where it was (the next plain run is still empty).
    let all = items_of(&ok(&run(
        &data,
        &["digest", "--all", "--no-summaries", "--format", "json"],
    )));
    assert_eq!(all.len(), ITEMS.len());
    for (id, _, _, _, topic) in ITEMS {
        let it = all.iter().find(|i| i["id"] == *id).expect("item listed");
        assert_eq!(it["topic"], *topic, "{id}: {it}");
        let c = it["confidence"].as_f64().expect("confidence");
        assert!((0.0..=1.0).contains(&c));
        assert!(it["secondary"].is_array());
        assert!(it.get("summary").is_none());
    }
    assert!(ok(&run(&data, &["digest", "--no-summaries"])).contains("Nothing new"));

    // A date window, with and without undated items; an empty window.
    let week = items_of(&ok(&run(
        &data,
        &[
            "digest",
            "--since",
            "2024-03-06",
            "--until",
            "2024-03-07",
            "--no-summaries",
            "--format",
            "json",
        ],
    )));
    let mut ids: Vec<&str> = week
        .iter()
        .map(|i| i["id"].as_str().unwrap_or(""))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["gov1", "rlhf1"]);
    let empty = ok(&run(
        &data,
        &["digest", "--week", "1999-W01", "--no-summaries"],
    ));
    assert!(empty.contains("Nothing new"), "{empty}");

    // HTML for email: no script, the hostile title escaped; Atom names each topic.
    let html = ok(&run(
        &data,
        &["digest", "--all", "--no-summaries", "--format", "html"],
    ));
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains("3.4 Tools for interpreting"));
    let atom = ok(&run(
        &data,
        &["digest", "--all", "--no-summaries", "--format", "atom"],
    ));
    assert!(atom.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\">"));
    assert!(atom.contains("<category term=\"3.5\"/>"));
    assert_eq!(atom.matches("<entry>").count(), ITEMS.len());

    // A user's own taxonomy; a malformed one names its line.
    let topics = tmp.path().join("topics.json");
    std::fs::write(
        &topics,
        r#"[
 {"id": "food", "title": "Cooking", "description": "Recipes, sauces, pasta and kitchen techniques.",
  "examples": ["a recipe for a vegetable soup", "how long to boil pasta", "baking bread at home"]},
 {"id": "attacks", "title": "Attacks on neural networks", "description": "Adversarial examples and perturbations that fool classifiers.",
  "examples": ["an adversarial patch fools an object detector"]}
]"#,
    )
    .expect("write");
    let own = items_of(&ok(&run(
        &data,
        &[
            "digest",
            "--all",
            "--no-summaries",
            "--format",
            "json",
            "--topics",
            topics.to_str().unwrap_or(""),
        ],
    )));
    let topic = |id: &str| {
        own.iter()
            .find(|i| i["id"] == id)
            .map(|i| i["topic"].clone())
    };
    assert_eq!(topic("cook1"), Some(json!("food")));
    assert_eq!(topic("adv1"), Some(json!("attacks")));
    std::fs::write(&topics, "[\n {\"id\": \"a\", \"title\": \"A\", \"description\": \"d\"},\n {\"id\": \"b\" \"title\": \"B\"}\n]")
        .expect("write");
    let bad = run(
        &data,
        &[
            "digest",
            "--all",
            "--no-summaries",
            "--topics",
            topics.to_str().unwrap_or(""),
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("topics.json:3"), "{err}");
    let bad = run(&data, &["digest", "--week", "2024-53x", "--no-summaries"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-Www"));
}

#[test]
fn summaries_cite_their_item_stay_shorter_than_it_and_are_cached() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    ingest(&data, tmp.path(), "a.jsonl", &ITEMS[..3]);
    let model = models().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let args = [
        "digest",
        "--all",
        "--format",
        "json",
        "--model",
        model.to_str().unwrap_or(""),
    ];
    let out = run(&data, &args);
    let items = items_of(&ok(&out));
    assert_eq!(items.len(), 3);
    for it in &items {
        let n = it["n"].as_u64().expect("n");
        let summary = it["summary"].as_str().expect("summary");
        let item = ITEMS.iter().find(|i| it["id"] == i.0).expect("fixture");
        // Not longer than the item (citation marks are not words of the summary).
        let mark = format!("[{n}]");
        let words = |s: &str| s.split_whitespace().filter(|w| *w != mark).count();
        assert!(words(summary) <= words(item.3), "{summary}");
        // Every sentence ends with the item's own citation.
        let sentences: Vec<&str> = summary
            .split(&mark)
            .filter(|s| !s.trim().is_empty())
            .collect();
        assert!(!sentences.is_empty());
        assert_eq!(summary.matches(&mark).count(), sentences.len(), "{summary}");
        assert!(summary.trim_end().ends_with(&mark), "{summary}");
    }
    // The second run reads every summary from the cache.
    let again = run(&data, &args);
    assert_eq!(
        items_of(&ok(&again))
            .iter()
            .map(|i| i["summary"].clone())
            .collect::<Vec<_>>(),
        items
            .iter()
            .map(|i| i["summary"].clone())
            .collect::<Vec<_>>()
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("3 summaries (3 cached"), "{err}");
}
