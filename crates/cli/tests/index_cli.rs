//! End-to-end tests of `overseer ingest` / `search` / `eval retrieval` on a slice of
//! the shared corpus with the real all-MiniLM-L6-v2 embedder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");
    assert!(
        Path::new(models)
            .join("all-minilm-l6-v2/model.safetensors")
            .exists(),
        "embedding model missing: run scripts/fetch-models"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_overseer"));
    c.env("OVERSEER_MODELS_DIR", models)
        .env_remove("OVERSEER_DATA_DIR")
        .env_remove("OVERSEER_EMBEDDER");
    c
}

fn corpus_lines(n: usize, skip: usize) -> Vec<String> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/corpus/ai_alignment_papers.jsonl"
    );
    let text = std::fs::read_to_string(p).expect("shared corpus at ../shared/data/corpus");
    text.lines()
        .skip(skip)
        .take(n)
        .map(str::to_string)
        .collect()
}

fn write_jsonl(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("create");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
    p
}

fn run(args: &[&str], data: &Path) -> Output {
    bin()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run overseer")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn search_json(data: &Path, q: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["search", "--json", "--k", "5"];
    args.extend_from_slice(extra);
    args.push(q);
    let o = run(&args, data);
    assert!(o.status.success(), "search failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("search --json prints JSON")
}

fn id_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).expect("corpus line");
    v["id"].as_str().expect("id").to_string()
}

#[test]
fn ingest_search_eval_and_bad_input() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    // 12 records keep the debug-build ingest short; every assertion below needs only a few.
    let mut lines = corpus_lines(12, 0);
    lines.insert(5, "{\"id\": \"broken\", \"text\": ".to_string());
    let f = write_jsonl(tmp.path(), "papers.jsonl", &lines);

    let o = run(&["ingest", f.to_str().expect("utf8")], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("12 added") && err.contains("1 failed"),
        "{err}"
    );
    assert!(
        err.contains("papers.jsonl:6"),
        "malformed line reported with its number: {err}"
    );

    // Search by a paraphrase of the first document's title: it must come first in every mode.
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
    let title = first["title"].as_str().expect("title");
    for mode in ["bm25", "dense", "hybrid"] {
        let v = search_json(&data, title, &["--mode", mode]);
        let r = &v["results"][0];
        assert_eq!(r["id"], first["id"], "mode {mode}: {v}");
        for key in ["title", "url", "score", "passage"] {
            assert!(!r[key].is_null(), "{key} missing");
        }
    }
    // Filters: an unknown source gives nothing; chunk level returns chunks.
    let v = search_json(&data, title, &["--source", "no-such-source"]);
    assert_eq!(v["results"].as_array().map(Vec::len), Some(0));

    // Incremental: nothing changes on a rerun.
    let o = run(&["ingest", f.to_str().expect("utf8")], &data);
    assert!(
        stderr(&o).contains("0 added, 0 updated, 12 skipped"),
        "{}",
        stderr(&o)
    );

    // A huge query is truncated with a warning and answered quickly. (Linux caps one
    // argv string at 128 KiB, so a 1 MB query cannot reach the CLI; the library bound
    // is the same for any length.)
    let big = "alignment ".repeat(12_000);
    let t = Instant::now();
    let o = run(&["search", "--json", &big], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("only the start is used"));
    assert!(t.elapsed() < Duration::from_secs(30));

    // eval retrieval: BEIR files, JSON per mode.
    let q = tmp.path().join("q.jsonl");
    std::fs::write(
        &q,
        format!(
            "{{\"_id\": \"1\", \"text\": {}}}\n",
            serde_json::json!(title)
        ),
    )
    .expect("w");
    let qr = tmp.path().join("q.tsv");
    std::fs::write(
        &qr,
        format!(
            "query-id\tcorpus-id\tscore\n1\t{}\t1\n",
            first["id"].as_str().expect("id")
        ),
    )
    .expect("w");
    let o = run(
        &[
            "eval",
            "retrieval",
            "--json",
            "--queries",
            q.to_str().expect("u"),
            "--qrels",
            qr.to_str().expect("u"),
        ],
        &data,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    for mode in ["bm25", "dense", "hybrid"] {
        assert_eq!(v[mode]["mrr@10"], 1.0, "{v}");
        assert_eq!(v[mode]["recall@100"], 1.0);
    }

    // An index from another format version: clear re-ingest message.
    let info = data.join("index/index.json");
    std::fs::write(&info, r#"{"format": 999, "embedder": "x", "dim": 384}"#).expect("w");
    let o = run(&["search", "anything"], &data);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("re-ingest"), "{}", stderr(&o));
}

#[test]
fn empty_corpus_and_empty_index() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let f = write_jsonl(tmp.path(), "empty.jsonl", &[]);
    let o = run(&["ingest", f.to_str().expect("utf8")], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("0 added"));
    let o = run(&["search", "anything"], &data);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ingest"), "{}", stderr(&o));
}

#[test]
fn kill_9_mid_ingest_keeps_previous_state_and_searches_keep_working() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let a = corpus_lines(6, 0);
    let fa = write_jsonl(tmp.path(), "a.jsonl", &a);
    let o = run(&["ingest", fa.to_str().expect("utf8")], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let a_title = serde_json::from_str::<serde_json::Value>(&a[3]).expect("json")["title"]
        .as_str()
        .expect("title")
        .to_string();
    let a_id = id_of(&a[3]);

    // A bigger second ingest (more records), killed mid-run. 50 records (~75 chunks) take
    // several seconds even on an idle machine; the kill comes after about one.
    let b = corpus_lines(50, 0);
    let fb = write_jsonl(tmp.path(), "b.jsonl", &b);
    let mut child = bin()
        .arg("--data-dir")
        .arg(&data)
        .args(["ingest", fb.to_str().expect("utf8")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ingest");
    // Searches work while it runs.
    let t = Instant::now();
    let mut searched = 0;
    while searched == 0 || t.elapsed() < Duration::from_millis(1000) {
        let v = search_json(&data, &a_title, &["--mode", "bm25"]);
        assert_eq!(v["results"][0]["id"], a_id.as_str());
        searched += 1;
    }
    assert!(searched > 0);
    let still_running = child.try_wait().expect("wait").is_none();
    child.kill().expect("kill -9"); // SIGKILL on Unix
    child.wait().expect("reap");
    assert!(
        still_running,
        "the ingest finished before the kill; make it bigger"
    );

    // The previous state is searchable.
    let v = search_json(&data, &a_title, &[]);
    assert_eq!(v["results"][0]["id"], a_id.as_str());

    // Rerunning completes the work.
    let o = run(&["ingest", "--json", fb.to_str().expect("utf8")], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert_eq!(s["docs"], 50, "{s}");
    let last_title = serde_json::from_str::<serde_json::Value>(&b[45]).expect("json")["title"]
        .as_str()
        .expect("t")
        .to_string();
    let v = search_json(&data, &last_title, &["--mode", "bm25"]);
    assert_eq!(v["results"][0]["id"], id_of(&b[45]).as_str());
}

#[test]
fn hostile_input_fails_alone_and_the_exit_code_says_when_nothing_was_ingested() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let src = tmp.path().join("in");
    std::fs::create_dir_all(&src).expect("mkdir");
    // 40,000 nested elements overflowed the stack: the process aborted (134) and the
    // good file of the same run was lost.
    let deep = format!("{}x{}", "<div>".repeat(40_000), "</div>".repeat(40_000));
    std::fs::write(src.join("deep.html"), &deep).expect("w");
    std::fs::write(
        src.join("good.txt"),
        "Corrigibility\n\nAn agent that accepts correction.",
    )
    .expect("w");
    // Two symbolic links reaching each other made the walk endless.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(".", src.join("self")).expect("link");
        std::fs::create_dir_all(src.join("a")).expect("mkdir");
        std::os::unix::fs::symlink("..", src.join("a/up")).expect("link");
    }
    let o = run(&["ingest", "--json", src.to_str().expect("utf8")], &data);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert_eq!(s["added"], 1, "{s}");
    assert_eq!(s["failed"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(
        s["failed"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("nested more than 1024 levels")),
        "{s}"
    );
    let v = search_json(&data, "corrigibility", &["--mode", "bm25"]);
    assert!(
        v["results"][0]["id"]
            .as_str()
            .is_some_and(|id| id.ends_with("good.txt")),
        "{v}"
    );

    // Every input failed: the summary is printed and the exit code is 1.
    let only = tmp.path().join("d.html");
    std::fs::write(&only, &deep).expect("w");
    let o = run(&["ingest", only.to_str().expect("utf8")], &data);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("1 failed") && err.contains("nothing was ingested"),
        "{err}"
    );

    // A path that does not exist stops the run before the index is touched.
    let missing = tmp.path().join("no-such-folder");
    let o = run(&["ingest", missing.to_str().expect("utf8")], &data);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no such file or folder"),
        "{}",
        stderr(&o)
    );

    // A JSONL record over --max-record-mb is a failure with its line number.
    let big = format!(
        "{{\"id\": \"big\", \"text\": \"{}\"}}\n{{\"id\": \"ok\", \"title\": \"Mesa\", \"text\": \"inner optimizers\"}}\n",
        "word ".repeat(300_000)
    );
    let f = tmp.path().join("big.jsonl");
    std::fs::write(&f, big).expect("w");
    let o = run(
        &[
            "ingest",
            "--json",
            "--max-record-mb",
            "1",
            f.to_str().expect("utf8"),
        ],
        &data,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    assert_eq!(s["added"], 1, "{s}");
    assert!(
        s["failed"][0]["location"]
            .as_str()
            .is_some_and(|l| l.ends_with("big.jsonl:1")),
        "{s}"
    );
    assert!(
        s["failed"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("over the 1.0 MiB limit")),
        "{s}"
    );
}
