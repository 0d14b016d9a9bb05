//! MiniLm against sentence-transformers: the committed fixture
//! `tests/fixtures/embed_minilm.json` was made by `scripts/reference/embed_fixture.py`
//! from the same model folder.

use std::path::PathBuf;
use std::sync::OnceLock;

use overseer_index::{Embedder, MiniLm};

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/all-minilm-l6-v2"
    ));
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models",
        dir.display()
    );
    dir
}

fn model() -> &'static MiniLm {
    static M: OnceLock<MiniLm> = OnceLock::new();
    M.get_or_init(|| MiniLm::load(&model_dir(), 2).expect("model folder loads"))
}

struct Item {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn fixture() -> Vec<Item> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/embed_minilm.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture is committed");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    assert_eq!(v["max_seq_length"], 256);
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|it| Item {
            text: it["text"].as_str().expect("text").to_string(),
            tokens: it["tokens"].as_u64().expect("tokens") as usize,
            embedding: it["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("float") as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn describes_itself() {
    let m = model();
    assert_eq!(m.name(), "all-MiniLM-L6-v2");
    assert_eq!(m.dim(), 384);
    assert_eq!(m.max_tokens(), 256);
}

#[test]
fn matches_sentence_transformers() {
    let m = model();
    let items = fixture();
    assert!(items.len() >= 30);
    assert!(
        items.iter().any(|it| it.tokens > 256),
        "fixture exercises truncation"
    );
    let texts: Vec<&str> = items.iter().map(|it| it.text.as_str()).collect();
    let got = m.embed(&texts).expect("embed");
    assert_eq!(got.len(), items.len());
    let mut worst = (1.0f64, String::new());
    for (it, v) in items.iter().zip(&got) {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
        let c = cosine(v, &it.embedding);
        if c < worst.0 {
            worst = (c, it.text.chars().take(60).collect());
        }
    }
    eprintln!("worst cosine {:.7} for {:?}", worst.0, worst.1);
    assert!(
        worst.0 >= 0.999,
        "cosine {} < 0.999 for {:?}",
        worst.0,
        worst.1
    );
}

#[test]
fn counts_tokens_like_the_reference_tokenizer() {
    let m = model();
    for it in fixture() {
        assert_eq!(
            m.count_tokens(&it.text),
            it.tokens,
            "token count of {:?}",
            it.text
        );
    }
}

/// Inputs of at most this many tokens (a pack's total, `[CLS]`/`[SEP]` included) run the
/// few-rows kernel with f16 weights (`embed/small.rs`, `ops::SMALL_ROWS`); larger ones the
/// f32 GEMM. Embeddings from the two paths agree to f16 rounding, not bit for bit. Where
/// the CPU has AMX, every size takes the same bf16 tiles instead.
const SMALL_ROWS: usize = 64;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn batch_invariance() {
    let m = model();
    let items = fixture();
    let texts: Vec<&str> = items.iter().map(|it| it.text.as_str()).collect();
    // Alone (one pack, threaded GEMMs or the few-rows kernel) vs inside batches of
    // different lengths and sizes (several packs in parallel).
    let together = m.embed(&texts).expect("embed");
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let rev = m.embed(&reversed).expect("embed");
    let tokens = |t: &str| (m.count_tokens(t) + 2).min(m.max_tokens());
    // Where the CPU has AMX, every pack takes the bf16 tiles: one path for all sizes.
    let one_path = overseer_kernels::Bf16Matrix::available();
    let mut checked_small = 0;
    let mut worst = (0.0f32, 1.0f32);
    for (i, t) in texts.iter().enumerate().step_by(5) {
        let alone = m.embed(&[t]).expect("embed").remove(0);
        let other = texts[(i + 7) % texts.len()];
        let pair = m.embed(&[other, t]).expect("embed").remove(1);
        let alone_small = tokens(t) <= SMALL_ROWS;
        let pair_small = tokens(t) + tokens(other) <= SMALL_ROWS;
        for (name, v, small) in [
            ("batch", &together[i], alone_small),
            ("reversed", &rev[texts.len() - 1 - i], alone_small),
            ("pair", &pair, alone_small != pair_small),
        ] {
            let diff = max_diff(&alone, v);
            let small = small && !one_path;
            // Same path: equal up to float summation order. f16 vs f32 weights: within
            // f16 rounding (unit vectors, entries ~0.05; measured ~1e-4).
            let (tol, c) = if small {
                (1e-3, 0.99999)
            } else {
                (1e-5, 0.999999)
            };
            let cos: f32 = alone.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
            worst = (worst.0.max(diff), worst.1.min(cos));
            assert!(
                diff <= tol && cos >= c,
                "{name}: max diff {diff}, cosine {cos} for {t:?}"
            );
            checked_small += usize::from(small);
        }
    }
    eprintln!(
        "alone vs batched (one path: {one_path}): worst max diff {}, worst cosine {}",
        worst.0, worst.1
    );
    assert!(one_path || checked_small > 0, "the fixture has short texts");
}

/// Every fixture text embedded alone, as a search query is (the short ones through the
/// few-rows f16 kernel, or AMX bf16 tiles where the CPU has them), still matches
/// sentence-transformers.
#[test]
fn single_texts_match_sentence_transformers() {
    let m = model();
    let items = fixture();
    let mut worst = (1.0f64, String::new());
    let mut small = 0;
    for it in &items {
        let v = m.embed(&[it.text.as_str()]).expect("embed").remove(0);
        small += usize::from(it.tokens + 2 <= SMALL_ROWS);
        let c = cosine(&v, &it.embedding);
        if c < worst.0 {
            worst = (c, it.text.chars().take(60).collect());
        }
    }
    eprintln!(
        "alone: worst cosine {:.7} for {:?} ({small} short texts)",
        worst.0, worst.1
    );
    assert!(small >= 5, "fixture has short texts");
    assert!(
        worst.0 >= 0.999,
        "cosine {} < 0.999 for {:?}",
        worst.0,
        worst.1
    );
}

#[test]
fn long_text_is_truncated_not_rejected() {
    let m = model();
    let base = "Mesa-optimizers may pursue proxy objectives. ";
    let long = base.repeat(200);
    let longer = base.repeat(20_000); // ~1 MB
    let v = m.embed(&[long.as_str(), longer.as_str()]).expect("embed");
    // Both truncate to the same first 254 word pieces.
    let diff = v[0]
        .iter()
        .zip(&v[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff <= 1e-5, "max diff {diff}");
    assert!(m.count_tokens(&long) > 1000);
}

#[test]
fn empty_batch_and_missing_model() {
    let m = model();
    assert!(m.embed(&[]).expect("empty batch").is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let err = MiniLm::load(dir.path(), 1).expect_err("empty folder is not a model");
    assert!(err.to_string().contains("fetch-models"), "{err}");
}
