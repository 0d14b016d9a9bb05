//! `overseer eval digest`: how well the digest files items, on the Alignment
//! Newsletter's own categories (`eval/digest/categories.tsv`), beside a BM25 and a
//! majority-class baseline in the same run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use overseer_index::Index;
use overseer_rag::digest::{Classifier, ClassifyConfig, Taxonomy, eval};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Newsletter category -> topic map (TSV: category, topic or `-`, reason).
    #[arg(long, default_value = "eval/digest/categories.tsv")]
    pub labels: PathBuf,
    /// Which labelled records: `dev` (tune on these), `test` (report these) or `all`.
    #[arg(long, default_value = "dev")]
    pub split: String,
    /// Topic file (default: the built-in agenda).
    #[arg(long)]
    pub topics: Option<PathBuf>,
    /// The `source` of the labelled records in the index.
    #[arg(long, default_value = "alignment_newsletter")]
    pub source: String,
    /// Print the whole report (with every prediction) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Override the classifier's example weight (0..1), for tuning on dev.
    #[arg(long, hide = true)]
    pub example_weight: Option<f32>,
    /// Override the "Other" similarity floor, for tuning on dev.
    #[arg(long, hide = true)]
    pub min_similarity: Option<f32>,
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let data_dir = g.data_dir()?;
    let index = Index::open(&data_dir, super::ingest::load_embedder(g)?)?;
    let taxonomy = match &a.topics {
        Some(p) => Taxonomy::load(p)?,
        None => Taxonomy::agenda(),
    };
    let labels =
        eval::load_labels(&a.labels).with_context(|| format!("reading {}", a.labels.display()))?;
    let mut cfg = ClassifyConfig::default();
    if let Some(w) = a.example_weight {
        cfg.example_weight = w;
    }
    if let Some(m) = a.min_similarity {
        cfg.min_similarity = m;
    }
    let classifier = Classifier::new(&taxonomy, index.embedder().as_ref(), cfg)?;
    let split: eval::Split = a.split.parse()?;
    let r = eval::evaluate(&index, &taxonomy, &classifier, &labels, &a.source, split)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "digest classification, split {} ({} labelled items, majority class {})",
        a.split, r.items, r.majority_topic
    );
    println!("{:<22} {:>9} {:>9}", "method", "top-1", "macro-F1");
    for (name, s) in [
        ("overseer (embeddings)", &r.ours),
        ("BM25 over topics", &r.bm25),
        ("majority class", &r.majority),
    ] {
        println!("{name:<22} {:>9.3} {:>9.3}", s.accuracy, s.macro_f1);
    }
    println!(
        "unmapped categories: {} items, {:.1}% filed under Other",
        r.unmapped,
        100.0 * r.unmapped_other
    );
    println!("\nper topic (support, F1 ours / BM25):");
    for (t, n) in &r.support {
        println!(
            "  {t:<6} {n:>4}  {:.3} / {:.3}",
            r.ours.per_topic.get(t).copied().unwrap_or(0.0),
            r.bm25.per_topic.get(t).copied().unwrap_or(0.0)
        );
    }
    let mut confusion: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for p in &r.predictions {
        if p.gold != p.ours {
            *confusion
                .entry((p.gold.clone(), p.ours.clone()))
                .or_default() += 1;
        }
    }
    let mut worst: Vec<_> = confusion.into_iter().collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.1));
    println!("\nmost frequent confusions (gold -> ours):");
    for ((g, o), n) in worst.iter().take(8) {
        println!("  {g} -> {o}: {n}");
    }
    Ok(())
}
