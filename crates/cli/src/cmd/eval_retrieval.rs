//! `overseer eval retrieval`: nDCG@10, MRR@10 and Recall@1/10/100 of each retrieval
//! mode on BEIR-format queries and qrels, side by side.

use std::path::PathBuf;

use anyhow::{Result, bail};
use overseer_index::{Index, Mode, eval};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// BEIR queries: JSONL lines {"_id", "text"}.
    #[arg(long)]
    pub queries: PathBuf,
    /// BEIR qrels: TSV query-id, corpus-id, score (header line).
    #[arg(long)]
    pub qrels: PathBuf,
    /// Evaluate only this mode (default: bm25, dense and hybrid).
    #[arg(long, value_parser = super::search::parse_mode)]
    pub mode: Option<Mode>,
    /// Hybrid fusion: `rrf`, `convex` (min-max) or `zscore`.
    #[arg(long, default_value = super::search::DEFAULT_FUSION)]
    pub fusion: String,
    #[arg(long, default_value_t = overseer_index::DEFAULT_ALPHA)]
    pub alpha: f32,
    #[arg(long, default_value_t = overseer_index::DEFAULT_RRF_K)]
    pub rrf_k: f32,
    /// Candidates per retriever before fusion, in chunks.
    #[arg(long, default_value_t = overseer_index::DEFAULT_DEPTH)]
    pub depth: usize,
    /// Search every query this many times; latency percentiles cover all runs.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// JSON output: {"bm25": {"ndcg@10", ...}, "dense": {...}, "hybrid": {...}}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let data_dir = g.data_dir()?;
    let fusion = super::search::fusion_of(&a.fusion, a.alpha, a.rrf_k)?;
    let queries = eval::read_queries(&a.queries)?;
    let qrels = eval::read_qrels(&a.qrels)?;
    let judged = queries.iter().filter(|q| qrels.contains_key(&q.id)).count();
    if judged == 0 {
        bail!(
            "no query in {} has a relevant document in {}",
            a.queries.display(),
            a.qrels.display()
        );
    }
    let index = Index::open(&data_dir, super::ingest::load_embedder(g)?)?;
    if index.stats()?.docs == 0 {
        bail!(
            "the index in {} is empty: run `overseer ingest` first",
            data_dir.display()
        );
    }
    let modes: Vec<Mode> = match a.mode {
        Some(m) => vec![m],
        None => Mode::ALL.to_vec(),
    };
    let mut out = serde_json::Map::new();
    let mut rows = Vec::new();
    for m in modes {
        let opts = eval::EvalOptions {
            mode: m,
            fusion,
            depth: a.depth,
            repeat: a.repeat.max(1),
        };
        let r = eval::evaluate(&index, &queries, &qrels, opts)?;
        out.insert(m.as_str().to_string(), serde_json::to_value(r)?);
        rows.push((m, r));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{judged} judged queries");
    println!(
        "{:<8} {:>8} {:>8} {:>9} {:>10} {:>11} {:>8} {:>8}",
        "mode", "nDCG@10", "MRR@10", "Recall@1", "Recall@10", "Recall@100", "p50 ms", "p99 ms"
    );
    for (m, r) in rows {
        println!(
            "{:<8} {:>8.4} {:>8.4} {:>9.4} {:>10.4} {:>11.4} {:>8.1} {:>8.1}",
            m.as_str(),
            r.ndcg10,
            r.mrr10,
            r.recall1,
            r.recall10,
            r.recall100,
            r.latency_ms_p50,
            r.latency_ms_p99
        );
    }
    Ok(())
}
