//! Rankings of a BEIR queries file, one JSON line per query, for comparing with other
//! retrievers outside Rust (`eval/retrieval/compare_bm25.py`):
//!
//! ```text
//! cargo run --release -p overseer-index --example run_queries -- \
//!     DATA_DIR QUERIES.jsonl [--models DIR] [--mode M] [--k K] [--depth D] [--threads N]
//!     [--alpha A] [--rrf-k K] [--rerank on|off] [--rerank-depth N] [--features]
//! ```
//!
//! Prints `{"_id": query id, "ids": [document ids, best first], "scores": [...]}` per
//! query: the document-level results of one search each, exactly as `overseer search
//! --json` would rank them (`--alpha`: convex fusion weight, `--rrf-k`: reciprocal-rank
//! fusion instead; `--rerank off`: hybrid results in fused order). With `--features`
//! (hybrid): `{"_id", "candidates": [RerankFeatures...]}`, what the reranker measured on
//! each candidate in fused order ([`overseer_index::Index::rerank_candidates`]), for
//! tuning its weights offline.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use overseer_index::{Fusion, Index, MiniLm, Mode, Rerank, SearchRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    let mut args = std::env::args().skip(1);
    let usage = "usage: run_queries DATA_DIR QUERIES.jsonl [--models DIR] [--mode bm25|dense|hybrid] \
                 [--k K] [--depth D] [--threads N] [--alpha A] [--rrf-k K] [--rerank on|off] \
                 [--rerank-depth N] [--features]";
    let data = PathBuf::from(args.next().ok_or(usage)?);
    let queries = PathBuf::from(args.next().ok_or(usage)?);
    let mut models = PathBuf::from("models/all-minilm-l6-v2");
    let (mut threads, mut k, mut mode) = (0usize, 100usize, Mode::Hybrid);
    let mut depth = overseer_index::DEFAULT_DEPTH;
    let (mut fusion, mut rerank, mut features) = (Fusion::default(), Rerank::default(), false);
    while let Some(flag) = args.next() {
        if flag == "--features" {
            features = true;
            continue;
        }
        let val = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--alpha" => {
                fusion = Fusion::Convex {
                    alpha: val.parse()?,
                }
            }
            "--rrf-k" => fusion = Fusion::Rrf { k: val.parse()? },
            "--rerank" if val == "off" => rerank = Rerank::OFF,
            "--rerank" if val == "on" => rerank = overseer_index::DEFAULT_RERANK,
            "--rerank-depth" => rerank.depth = val.parse()?,
            "--models" => models = PathBuf::from(val),
            "--threads" => threads = val.parse()?,
            "--k" => k = val.parse()?,
            "--mode" => mode = val.parse()?,
            "--depth" => depth = val.parse()?,
            _ => return Err(usage.into()),
        }
    }
    if features && rerank.is_off() {
        rerank = overseer_index::DEFAULT_RERANK;
    }
    let embedder = Arc::new(MiniLm::load(&models, threads)?);
    let index = Index::open(&data, embedder)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    for q in overseer_index::eval::read_queries(&queries)? {
        let mut req = SearchRequest::new(q.text.clone(), k);
        req.mode = mode;
        req.depth = depth;
        req.fusion = fusion;
        req.rerank = rerank;
        if features {
            let line = serde_json::json!({
                "_id": q.id,
                "candidates": index.rerank_candidates(&req)?,
            });
            writeln!(out, "{line}")?;
            continue;
        }
        let hits = index.search(&req)?;
        let line = serde_json::json!({
            "_id": q.id,
            "ids": hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            "scores": hits.iter().map(|h| h.score).collect::<Vec<_>>(),
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}
