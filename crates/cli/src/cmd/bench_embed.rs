//! `overseer bench embed`: embedding throughput of the index's embedder on a file of
//! texts (one per line), in batches the way ingest embeds chunks. `scripts/bench-embed`
//! runs it next to sentence-transformers on the same texts (docs/BENCHMARKS.md).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use overseer_index::{Embedder, MiniLm};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Text file, one text per line (empty lines are skipped).
    #[arg(long)]
    pub texts: PathBuf,
    /// Texts per `embed` call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Untimed warm-up batches before the measurement.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Only the first N texts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON output: {"texts_per_s","tokens_per_s","n_texts","mean_tokens","threads",...}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let raw = std::fs::read_to_string(&a.texts)
        .with_context(|| format!("cannot read {}", a.texts.display()))?;
    let mut texts: Vec<&str> = raw.lines().filter(|l| !l.trim().is_empty()).collect();
    if let Some(n) = a.limit {
        texts.truncate(n);
    }
    if texts.is_empty() {
        bail!("{} holds no texts (one per line)", a.texts.display());
    }
    let dir = g.embedder_dir()?;
    let threads = g.threads();
    let t_load = Instant::now();
    let model =
        MiniLm::load(&dir, threads).with_context(|| format!("loading {}", dir.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();

    // Tokens the model reads: word pieces truncated to the budget, plus [CLS] and [SEP].
    let budget = model.max_tokens() - 2;
    let tokens: usize = texts
        .iter()
        .map(|t| model.count_tokens(t).min(budget) + 2)
        .sum();

    for batch in texts.chunks(a.batch).take(a.warmup) {
        model.embed(batch)?;
    }
    let t = Instant::now();
    let mut n = 0;
    for batch in texts.chunks(a.batch) {
        n += model.embed(batch)?.len();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, texts.len(), "embed returns one vector per text");

    let texts_per_s = n as f64 / secs;
    let tokens_per_s = tokens as f64 / secs;
    let mean_tokens = tokens as f64 / n as f64;
    if a.json {
        let out = serde_json::json!({
            "embedder": model.name(),
            "texts_per_s": texts_per_s,
            "tokens_per_s": tokens_per_s,
            "n_texts": n,
            "mean_tokens": mean_tokens,
            "threads": threads,
            "batch": a.batch,
            "seconds": secs,
            "load_seconds": load_s,
        });
        println!("{out}");
    } else {
        println!(
            "{}: {n} texts ({mean_tokens:.1} tokens each incl. [CLS]/[SEP]) in {secs:.2} s on \
             {threads} threads, batch {}: {texts_per_s:.1} texts/s, {tokens_per_s:.0} tokens/s \
             (model load {load_s:.2} s)",
            model.name(),
            a.batch
        );
    }
    Ok(())
}
