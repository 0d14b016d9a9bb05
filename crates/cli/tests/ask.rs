//! `overseer ask` and `overseer eval answers` through the real binary, on a small
//! subset of the shared corpus ingested once per test run, with SmolLM2 locally and
//! through a real llama.cpp server (from the project venv) for the remote path.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_overseer"));
    c.env_remove("OVERSEER_MODEL")
        .env_remove("OVERSEER_LLM_URL")
        .env_remove("OVERSEER_DATA_DIR")
        .env("OVERSEER_THREADS", "2")
        .env("OVERSEER_MODELS_DIR", models());
    c
}

fn models() -> PathBuf {
    let m = Path::new(ROOT).join("models");
    for f in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "all-minilm-l6-v2/model.safetensors",
    ] {
        assert!(
            m.join(f).exists(),
            "{} missing: run scripts/fetch-models",
            m.join(f).display()
        );
    }
    m
}

fn smollm2() -> PathBuf {
    models().join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Documents the tests ask about, plus distractors.
const DOCS: &[&str] = &[
    "7e333e1996f44c06b347e226bd670648", // Gradient hacking
    "60a2a0b52400348b274163e564fa287e", // Categorizing Variants of Goodhart's Law
    "6f7d0c378220eaa63ab14d98c7a60923", // The Solomonoff Prior is Malign
    "cbed48ecaacb7871b5db98e29e0003c8", // Orthogonality thesis
    "9390db1ebd21b183e034b0618894956a", // Deep RL from human preferences
];

/// An index of DOCS and 25 other documents, built once per test run.
fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let corpus = Path::new(ROOT).join("../shared/data/corpus");
        assert!(
            corpus.is_dir(),
            "{} missing: the shared data must sit beside the checkout",
            corpus.display()
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ask-index");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let mut subset = String::new();
        let mut others = 0;
        for file in ["ai_alignment_papers.jsonl", "alignment_newsletter.jsonl"] {
            let text = std::fs::read_to_string(corpus.join(file)).expect("read corpus");
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).expect("corpus line is JSON");
                let id = v["id"].as_str().unwrap_or_default();
                if DOCS.contains(&id) || (others < 25 && line.len() % 7 == 0) {
                    if !DOCS.contains(&id) {
                        others += 1;
                    }
                    subset.push_str(line);
                    subset.push('\n');
                }
            }
        }
        let jsonl = dir.join("subset.jsonl");
        std::fs::write(&jsonl, subset).expect("write subset");
        let out = bin()
            .arg("ingest")
            .arg(&jsonl)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .output()
            .expect("run overseer ingest");
        assert!(
            out.status.success(),
            "ingest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("data")
    })
}

fn ask(args: &[&str]) -> Output {
    bin()
        .arg("ask")
        .arg("--data-dir")
        .arg(data_dir())
        .args(args)
        .output()
        .expect("run overseer ask")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "ask failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `--json` contract: exactly these keys, and every [n] in the answer listed.
fn check_contract(v: &Value) {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "abstained",
            "answer",
            "citations",
            "fallback",
            "followups",
            "timings"
        ]
    );
    let answer = v["answer"].as_str().expect("answer is a string");
    let cited: Vec<u64> = v["citations"]
        .as_array()
        .expect("citations array")
        .iter()
        .map(|c| {
            for k in ["id", "title", "url", "passage"] {
                assert!(c[k].is_string(), "citation.{k} is a string: {c}");
            }
            assert!(c["supported"].is_boolean());
            c["n"].as_u64().expect("n is an integer")
        })
        .collect();
    // Independent of the crate's parser: every bracketed group of numbers.
    let re_like = answer
        .split('[')
        .skip(1)
        .filter_map(|s| s.split_once(']').map(|(a, _)| a));
    for group in re_like {
        if group
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
            && !group.trim().is_empty()
        {
            for n in group
                .split(',')
                .filter_map(|x| x.trim().parse::<u64>().ok())
            {
                assert!(
                    cited.contains(&n),
                    "[{n}] in the answer has no citation entry: {v}"
                );
            }
        }
    }
    assert!(v["timings"]["total_ms"].as_f64().is_some_and(|t| t > 0.0));
    assert!(v["abstained"].is_boolean());
    assert!(v["followups"].as_array().is_some_and(|f| f.len() <= 3));
}

#[test]
fn answers_with_valid_citations_using_the_local_model() {
    let model = smollm2();
    // Short prompt and answer: this checks the plumbing, not the model's prose.
    let out = ask(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--json",
        "--mode",
        "concise",
        "--max-context-tokens",
        "300",
        "--max-answer-tokens",
        "48",
        "What is gradient hacking?",
    ]);
    let v = json_of(&out);
    check_contract(&v);
    assert_eq!(v["abstained"], false, "{v}");
    assert!(!v["answer"].as_str().unwrap_or_default().trim().is_empty());
    let t = &v["timings"];
    assert!(
        t["first_token_ms"]
            .as_f64()
            .is_some_and(|x| x > 0.0 && x <= t["total_ms"].as_f64().unwrap_or(0.0))
    );
    for c in v["citations"].as_array().into_iter().flatten() {
        assert!(!c["passage"].as_str().unwrap_or_default().is_empty());
    }
}

#[test]
fn abstains_when_the_corpus_cannot_answer() {
    // The relevance gate runs before the model, so this is fast.
    let out = ask(&[
        "--model",
        smollm2().to_str().expect("utf-8"),
        "--json",
        "How do I bake sourdough bread at home?",
    ]);
    let v = json_of(&out);
    check_contract(&v);
    assert_eq!(v["abstained"], true, "{v}");
    assert!(v["citations"].as_array().is_some_and(Vec::is_empty));
    assert!(
        v["answer"]
            .as_str()
            .unwrap_or_default()
            .contains("don't answer")
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["ask", "--json", "--model"])
        .arg(smollm2())
        .arg("--data-dir")
        .arg(empty.path())
        .arg("What is RLHF?")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overseer ingest"), "{err}");

    // 100 kB as an argument (the OS caps one argument at 128 kB).
    let huge = "why ".repeat(25_000);
    let out = ask(&["--model", smollm2().to_str().expect("utf-8"), &huge]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too long"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line of error: {err}");

    // 1 MB on stdin in a conversation: an error for that line, and the session goes on.
    let mut child = bin()
        .arg("ask")
        .arg("--data-dir")
        .arg(data_dir())
        .args(["--json", "--model"])
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ask");
    let mut input = "why ".repeat(250_000);
    input.push_str("\nHow do I bake sourdough bread at home?\n");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("too long"));
    let v: Value = serde_json::from_slice(&out.stdout).expect("the second question answered");
    assert_eq!(v["abstained"], true);
}

#[test]
fn dead_or_stalled_server_is_a_clear_error_without_hanging() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let start = Instant::now();
    let out = ask(&[
        "--llm-url",
        &format!("http://127.0.0.1:{port}"),
        "--llm-retries",
        "1",
        "What is gradient hacking?",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the LLM server"), "{err}");

    // Accepts connections and never answers.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = l.incoming().filter_map(Result::ok).collect();
        drop(held);
    });
    let out = ask(&[
        "--llm-url",
        &url,
        "--llm-read-timeout",
        "1",
        "What is gradient hacking?",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
}

/// A llama.cpp server from the project venv, killed on drop.
struct LlamaServer(Child);
impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn llama_server() -> (LlamaServer, String) {
    let python = Path::new(ROOT).join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup-python server",
        python.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new(python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(smollm2())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--n_threads",
            "2",
            "--n_ctx",
            "2048",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn llama_cpp.server");
    let mut server = LlamaServer(child);
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = server.0.try_wait() {
            panic!("llama_cpp.server exited ({s}): run scripts/setup-python server");
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return (server, format!("http://127.0.0.1:{port}/v1"));
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "llama_cpp.server did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn answers_through_a_real_openai_compatible_server_and_keeps_a_conversation() {
    let (_server, url) = llama_server();
    let v = json_of(&ask(&[
        "--llm-url",
        &url,
        "--json",
        "--mode",
        "concise",
        "--max-answer-tokens",
        "64",
        "What is Goodhart's law?",
    ]));
    check_contract(&v);
    assert_eq!(v["abstained"], false, "{v}");

    // Interactive: two questions on stdin, the second a follow-up; one JSON line each.
    let mut child = bin()
        .arg("ask")
        .arg("--data-dir")
        .arg(data_dir())
        .args([
            "--llm-url",
            &url,
            "--json",
            "--no-followups",
            "--max-answer-tokens",
            "64",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ask");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"What is the orthogonality thesis?\nWho argued for it?\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2);
    lines.iter().for_each(check_contract);
}

#[test]
fn eval_answers_reports_grounding_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = dir.path().join("q.jsonl");
    std::fs::write(
        &q,
        concat!(
            r#"{"id":"gh","question":"What is gradient hacking?","answerable":true,"relevant":["7e333e1996f44c06b347e226bd670648"]}"#, "\n",
            r#"{"id":"bread","question":"How do I bake sourdough bread at home?","answerable":false,"relevant":[]}"#, "\n",
        ),
    )
    .expect("write questions");
    let out = bin()
        .args([
            "eval",
            "answers",
            "--json",
            "--mode",
            "concise",
            "--max-context-tokens",
            "300",
        ])
        .args(["--max-answer-tokens", "48", "--model"])
        .arg(smollm2())
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--questions")
        .arg(&q)
        .output()
        .expect("run eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let s = &v["summary"];
    assert_eq!(s["questions"], 2);
    assert_eq!(s["errors"], 0);
    assert_eq!(s["abstention_unanswerable"], 1.0, "{s}");
    assert_eq!(s["retrieval_hit"], 1.0, "{s}");
    let rows = v["questions"].as_array().expect("rows");
    assert_eq!(rows[0]["id"], "gh");
    assert_eq!(rows[0]["abstained"], false);
    assert!(rows[0]["relevance"].as_f64() > rows[1]["relevance"].as_f64());
}

/// `eval answers --from` scores stored answers of any pipeline with the same measures:
/// a pasted source block is junk with a copy ratio near 1, an answer in other words
/// is neither, and key points are counted.
#[test]
fn eval_answers_scores_stored_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let q = dir.path().join("q.jsonl");
    std::fs::write(
        &q,
        concat!(
            r#"{"id":"paste","kind":"answerable","question":"What is gradient hacking?","answerable":true,"relevant":[],"key_points":[["gradient"],["mesa"]]}"#, "\n",
            r#"{"id":"own","kind":"answerable","question":"What is gradient hacking?","answerable":true,"relevant":[],"key_points":[["gradient"],["mesa"]]}"#, "\n",
            r#"{"id":"nf","kind":"near-field","question":"What did the Bletchley Declaration say?","answerable":false,"relevant":[],"key_points":[]}"#, "\n",
        ),
    )
    .expect("write questions");
    let passage = "This post calls attention to the problem of gradient hacking, where a powerful \
                   agent being trained by gradient descent could structure its computation in \
                   such a way that it causes its gradients to update it in some particular way.";
    let stored = [
        serde_json::json!({"id": "paste", "abstained": false,
            "answer": format!("[1] Gradient hacking — Evan Hubinger (2019-01-01)\n{passage}"),
            "citations": [{"n": 1, "passage": passage}],
            "timings": {"first_token_ms": 100.0, "total_ms": 900.0}}),
        serde_json::json!({"id": "own", "abstained": false,
            "answer": "A trained model could shape the signal that trains it, steering its own \
                       gradient updates to keep goals that training would otherwise remove [1].",
            "citations": [{"n": 1, "passage": passage}],
            "timings": {"first_token_ms": 100.0, "total_ms": 800.0}}),
        serde_json::json!({"id": "nf", "abstained": true, "answer": "My sources don't answer this.",
            "citations": [], "timings": {"first_token_ms": 10.0, "total_ms": 10.0}}),
    ];
    let from = dir.path().join("answers.jsonl");
    let lines: Vec<String> = stored.iter().map(ToString::to_string).collect();
    std::fs::write(&from, lines.join("\n") + "\n").expect("write answers");
    let out = bin()
        .args(["eval", "answers", "--json", "--questions"])
        .arg(&q)
        .arg("--from")
        .arg(&from)
        .output()
        .expect("run eval");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rows = v["questions"].as_array().expect("rows");
    assert!(
        rows[0]["copy_ratio"].as_f64().is_some_and(|c| c > 0.8),
        "{}",
        rows[0]
    );
    assert_eq!(rows[0]["junk"], "source_headers");
    assert_eq!(rows[1]["copy_ratio"], 0.0);
    assert!(rows[1]["junk"].is_null());
    assert_eq!(rows[1]["key_point_recall"], 0.5);
    assert_eq!(rows[1]["cites"], true);
    let s = &v["summary"];
    assert_eq!(s["junk"], 1);
    assert_eq!(s["abstention_near_field"], 1.0);
    assert_eq!(s["false_abstention"], 0.0);
}
