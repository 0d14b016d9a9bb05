//! `overseer eval digest`: how well the digest files items, on the Alignment
//! Newsletter's own categories (`eval/digest/categories.tsv`), beside a BM25 and a
//! majority-class baseline in the same run.

use std::path::PathBuf;

use anyhow::{Context, Result};
use overseer_index::Index;
use overseer_rag::digest::{
    self, Classifier, ClassifyConfig, DigestOptions, Format, Selection, SummaryCache, Taxonomy,
    eval,
};

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
    /// Instead of scoring the classifier: build the digest of each of these newsletter
    /// issues (comma-separated `newsletter` values, e.g. "AN #15,AN #32") from exactly
    /// its items, and compare its grouping with the newsletter's own (adjusted Rand
    /// index, pairwise F1) and its summaries with the newsletter's.
    #[arg(long)]
    pub issues: Option<String>,
    /// With --issues: folder for the digests and the comparison (README.md).
    #[arg(long, default_value = "docs/digest")]
    pub out_dir: PathBuf,
    /// With --issues: skip the summaries.
    #[arg(long)]
    pub no_summaries: bool,
    #[command(flatten)]
    pub backend: super::ask::BackendArgs,
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
    if let Some(issues) = &a.issues {
        return issues_report(g, &a, &index, &taxonomy, cfg, issues);
    }
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

/// One newsletter issue's items: id -> (title, category, the newsletter's text).
type IssueItems = std::collections::BTreeMap<String, (String, String, String)>;

fn issue_items(index: &Index, issue: &str) -> Result<IssueItems> {
    let mut out = IssueItems::new();
    index.for_each_document(&mut |d| {
        if d.meta.extra.get("newsletter").and_then(|v| v.as_str()) == Some(issue) {
            let text = index
                .document(&d.meta.id)?
                .map(|doc| {
                    doc.chunks
                        .first()
                        .map(|c| c.text.clone())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            let cat = d.meta.tags.first().cloned().unwrap_or_default();
            out.insert(d.meta.id.clone(), (d.meta.title.clone(), cat, text));
        }
        Ok(())
    })?;
    Ok(out)
}

/// The first `n` sentences of `text` (at ". " boundaries), on one line.
fn opening(text: &str, n: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = 0;
    for _ in 0..n {
        match flat[end..].find(". ") {
            Some(p) => end += p + 2,
            None => return flat,
        }
    }
    flat[..end].trim().to_string()
}

fn issues_report(
    g: &Global,
    a: &Args,
    index: &Index,
    taxonomy: &Taxonomy,
    cfg: ClassifyConfig,
    issues: &str,
) -> Result<()> {
    let data_dir = g.data_dir()?;
    let backend = if a.no_summaries {
        None
    } else {
        Some(super::ask::build_backend(g, &a.backend)?)
    };
    let mut cache = SummaryCache::open(&data_dir)?;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let mut table = String::from(
        "| issue | items | newsletter categories | digest topics | adjusted Rand index | pairwise precision | pairwise recall | pairwise F1 | median summary copy ratio | summary fallbacks |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut compare = String::new();
    let mut compared = 0;
    for issue in issues.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let items = issue_items(index, issue)?;
        if items.is_empty() {
            anyhow::bail!("no indexed item carries newsletter `{issue}`");
        }
        let sel = Selection {
            ids: Some(items.keys().cloned().collect()),
            ..Selection::default()
        };
        let opts = DigestOptions {
            summaries: backend.is_some(),
            classify: cfg,
            title: format!("Digest of the items of Alignment Newsletter {issue}"),
            ..DigestOptions::default()
        };
        eprintln!("{issue}: {} items", items.len());
        let d = digest::build(
            index,
            taxonomy,
            &sel,
            &opts,
            backend.as_deref(),
            Some(&mut cache),
            &mut |_| {},
        )?;
        let slug: String = issue
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        let path = a.out_dir.join(format!("{slug}.md"));
        std::fs::write(&path, digest::render(&d, Format::Markdown))
            .with_context(|| format!("writing {}", path.display()))?;
        let ours: Vec<&str> = d.items.iter().map(|i| i.topic.as_str()).collect();
        let gold: Vec<&str> = d
            .items
            .iter()
            .map(|i| items.get(&i.id).map_or("", |x| x.1.as_str()))
            .collect();
        let ag = eval::agreement(&ours, &gold);
        let ncat = gold.iter().collect::<std::collections::HashSet<_>>().len();
        let ntop = ours.iter().collect::<std::collections::HashSet<_>>().len();
        table.push_str(&format!(
            "| [{issue}]({slug}.md) | {} | {ncat} | {ntop} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
            d.items.len(),
            ag.ari,
            ag.pair_precision,
            ag.pair_recall,
            ag.pair_f1,
            d.stats
                .median_copy_ratio
                .map_or("–".to_string(), |c| format!("{c:.3}")),
            d.stats.summary_fallbacks
        ));
        println!(
            "{issue}: {} items, ARI {:.3}, pairwise F1 {:.3}",
            d.items.len(),
            ag.ari,
            ag.pair_f1
        );
        // Summaries next to the newsletter's own, for the first items of the digest.
        for it in d.items.iter().filter(|i| i.summary.is_some()) {
            if compared >= 5 {
                break;
            }
            let Some((title, cat, text)) = items.get(&it.id) else {
                continue;
            };
            compare.push_str(&format!(
                "### {title} ({issue})\n\n- Newsletter ({cat}): {}\n- Digest ({}{}): {}\n\n",
                opening(text, 2),
                it.topic,
                if it.summary_fallback {
                    ", fallback"
                } else {
                    ""
                },
                it.summary.as_deref().unwrap_or("")
            ));
            compared += 1;
        }
    }
    let readme = format!(
        "# Digests of three Alignment Newsletter issues\n\n\
Each digest is built from exactly the items of one issue (`overseer eval digest --issues ...`), \
filed under the research agenda's challenges and compared with how the newsletter itself grouped \
the same items (its own categories, which are not the agenda's: agreement measures whether the \
same items end up together, whatever the labels).\n\n{table}\n\
## Summaries next to the newsletter's own\n\n\
The newsletter's text is the item (the digest summarises the newsletter's summary in its own words); \
shown: the newsletter's first two sentences and the digest's summary.\n\n{compare}"
    );
    let path = a.out_dir.join("README.md");
    std::fs::write(&path, readme).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
