//! Search latency, stage by stage, on an existing index (release build):
//!
//! ```text
//! cargo run --release -p overseer-index --example search_latency -- \
//!     DATA_DIR QUERIES.jsonl [--models DIR] [--threads N] [--repeat R] [--k K] [--mode M] [--depth D]
//!     [--rerank on|off]
//! ```
//!
//! Opens `DATA_DIR` with the MiniLM embedder, runs every query of a BEIR queries file
//! (`{"_id","text"}` per line) `R` times (after one warm-up pass) and prints p50 / p99 / mean
//! of the whole search and of each stage ([`overseer_index::Index::search_timed`]), plus the
//! query embedding alone and the token counts of the queries. Used by `scripts/bench-search`
//! and docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use overseer_index::{Embedder, Index, MiniLm, Mode, SearchRequest};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn row(name: &str, v: &mut [f64]) {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "{name:<22} {:>9.3} {:>9.3} {:>9.3}",
        pct(v, 0.5),
        pct(v, 0.99),
        mean
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    let mut args = std::env::args().skip(1);
    let usage = "usage: search_latency DATA_DIR QUERIES.jsonl [--models DIR] [--threads N] \
                 [--repeat R] [--k K] [--mode bm25|dense|hybrid] [--depth D] [--rerank on|off]";
    let data = PathBuf::from(args.next().ok_or(usage)?);
    let queries = PathBuf::from(args.next().ok_or(usage)?);
    let mut models = PathBuf::from("models/all-minilm-l6-v2");
    let (mut threads, mut repeat, mut k, mut mode) = (0usize, 3usize, 100usize, Mode::Hybrid);
    let mut depth = overseer_index::DEFAULT_DEPTH;
    let mut rerank = overseer_index::Rerank::default();
    while let Some(flag) = args.next() {
        let val = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--models" => models = PathBuf::from(val),
            "--threads" => threads = val.parse()?,
            "--repeat" => repeat = val.parse()?,
            "--k" => k = val.parse()?,
            "--mode" => mode = val.parse()?,
            "--depth" => depth = val.parse()?,
            "--rerank" if val == "on" => rerank = overseer_index::DEFAULT_RERANK,
            "--rerank" if val == "off" => rerank = overseer_index::Rerank::OFF,
            _ => return Err(usage.into()),
        }
    }
    let t = Instant::now();
    let embedder = Arc::new(MiniLm::load(&models, threads)?);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let index = Index::open(&data, embedder.clone())?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let texts: Vec<String> = overseer_index::eval::read_queries(&queries)?
        .into_iter()
        .map(|q| q.text)
        .collect();
    let tokens: Vec<usize> = texts.iter().map(|q| embedder.count_tokens(q) + 2).collect();
    let stats = index.stats()?;
    println!(
        "index: {} docs, {} chunks; model load {load_ms:.0} ms, index open {open_ms:.1} ms; \
         {} embedder threads; {} queries, tokens/query mean {:.1} max {}; mode {}, k {k}, \
         depth {depth}, {repeat} runs",
        stats.docs,
        stats.chunks,
        embedder.threads(),
        texts.len(),
        tokens.iter().sum::<usize>() as f64 / tokens.len().max(1) as f64,
        tokens.iter().max().unwrap_or(&0),
        mode.as_str(),
    );

    // Warm-up: page in the model, the vectors and the tantivy files.
    for q in &texts {
        let mut req = SearchRequest::new(q.clone(), k);
        req.mode = mode;
        req.depth = depth;
        req.rerank = rerank;
        index.search(&req)?;
    }
    let mut total = Vec::new();
    let mut stages: [Vec<f64>; 8] = Default::default();
    let mut embed_alone = Vec::new();
    for _ in 0..repeat {
        for q in &texts {
            let t = Instant::now();
            embedder.embed(&[q.as_str()])?;
            embed_alone.push(t.elapsed().as_secs_f64() * 1e3);
            let mut req = SearchRequest::new(q.clone(), k);
            req.mode = mode;
            req.depth = depth;
            req.rerank = rerank;
            let t = Instant::now();
            let (_, st) = index.search_timed(&req)?;
            total.push(t.elapsed().as_secs_f64() * 1e3);
            for (v, us) in stages.iter_mut().zip([
                st.setup_us,
                st.bm25_us,
                st.filter_us,
                st.embed_us,
                st.dense_us,
                st.fusion_us,
                st.rerank_us,
                st.assemble_us,
            ]) {
                v.push(us / 1e3);
            }
        }
    }
    println!("{:<22} {:>9} {:>9} {:>9}", "ms", "p50", "p99", "mean");
    row("search (total)", &mut total);
    for (name, v) in [
        "  setup",
        "  bm25",
        "  filter rows",
        "  query embedding",
        "  dense search",
        "  fusion + docs",
        "  rerank",
        "  assemble hits",
    ]
    .into_iter()
    .zip(stages.iter_mut())
    {
        row(name, v);
    }
    row("embed alone", &mut embed_alone);
    Ok(())
}
