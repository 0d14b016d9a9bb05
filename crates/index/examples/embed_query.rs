//! Query-embedding latency alone, robust to a busy machine (release build):
//!
//! ```text
//! cargo run --release -p overseer-index --example embed_query -- \
//!     QUERIES.jsonl [--models DIR] [--threads N] [--reps R]
//! ```
//!
//! Embeds every query of a BEIR queries file `R` times in a row (after one warm-up) and
//! prints, over the queries, the median and mean of each query's *fastest* run, and the
//! median of all runs. The per-query minimum is what an A/B comparison needs on a machine
//! shared with other jobs: other processes only ever add time, so the minimum over a few
//! runs filters out most of their interference, where a median over all runs does not.

use std::path::PathBuf;
use std::time::Instant;

use overseer_index::{Embedder, MiniLm};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed_query QUERIES.jsonl [--models DIR] [--threads N] [--reps R]";
    let queries = PathBuf::from(args.next().ok_or(usage)?);
    let mut models = PathBuf::from("models/all-minilm-l6-v2");
    let (mut threads, mut reps) = (0usize, 10usize);
    while let Some(flag) = args.next() {
        let val = args.next().ok_or(usage)?;
        match flag.as_str() {
            "--models" => models = PathBuf::from(val),
            "--threads" => threads = val.parse()?,
            "--reps" => reps = val.parse::<usize>()?.max(1),
            _ => return Err(usage.into()),
        }
    }
    let embedder = MiniLm::load(&models, threads)?;
    let texts: Vec<String> = overseer_index::eval::read_queries(&queries)?
        .into_iter()
        .map(|q| q.text)
        .collect();
    if texts.is_empty() {
        return Err("no queries".into());
    }
    let mut mins = Vec::with_capacity(texts.len());
    let mut all = Vec::with_capacity(texts.len() * reps);
    for q in &texts {
        embedder.embed(&[q.as_str()])?;
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            let v = embedder.embed(&[q.as_str()])?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(v);
            best = best.min(ms);
            all.push(ms);
        }
        mins.push(best);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mean_min = mins.iter().sum::<f64>() / mins.len() as f64;
    let tokens: usize = texts.iter().map(|q| embedder.count_tokens(q) + 2).sum();
    println!(
        "{} queries (mean {:.1} tokens), {} threads, {reps} runs each: \
         per-query min: median {:.3} ms, mean {:.3} ms; all runs: median {:.3} ms",
        texts.len(),
        tokens as f64 / texts.len() as f64,
        embedder.threads(),
        median(&mut mins),
        mean_min,
        median(&mut all)
    );
    Ok(())
}
