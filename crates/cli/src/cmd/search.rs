//! `overseer search`: BM25, dense or hybrid search of the literature index, printed
//! for people (query terms in bold on a terminal) or as JSON.

use std::io::IsTerminal;

use anyhow::{Result, bail};
use overseer_index::{Filters, Fusion, Index, Mode, SearchRequest};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The query.
    pub query: String,
    /// Number of results.
    #[arg(long, short, default_value_t = 10)]
    pub k: usize,
    /// Only this source (repeatable).
    #[arg(long)]
    pub source: Vec<String>,
    /// Only documents by this author (repeatable).
    #[arg(long)]
    pub author: Vec<String>,
    /// Only documents with this tag (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Published on or after (YYYY, YYYY-MM, YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<String>,
    /// Published on or before.
    #[arg(long)]
    pub until: Option<String>,
    /// Retriever.
    #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
    pub mode: Mode,
    /// Hybrid fusion: `rrf`, `convex` (min-max normalised) or `zscore` (see --alpha).
    #[arg(long, default_value = DEFAULT_FUSION)]
    pub fusion: String,
    /// Weight of the dense scores in convex fusion (0..1).
    #[arg(long, default_value_t = overseer_index::DEFAULT_ALPHA)]
    pub alpha: f32,
    /// Constant of reciprocal-rank fusion.
    #[arg(long, default_value_t = overseer_index::DEFAULT_RRF_K)]
    pub rrf_k: f32,
    /// Candidates per retriever before fusion, in chunks.
    #[arg(long, default_value_t = overseer_index::DEFAULT_DEPTH)]
    pub depth: usize,
    /// Return chunks instead of documents.
    #[arg(long)]
    pub chunks: bool,
    /// JSON output: {"results": [{"id","title","url","score","passage",...}]}.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e: overseer_index::Error| e.to_string())
}

/// Default `--fusion`; must name the kind of `Fusion::default()`.
pub const DEFAULT_FUSION: &str = "convex";

pub fn fusion_of(kind: &str, alpha: f32, rrf_k: f32) -> Result<Fusion> {
    Ok(match kind {
        "rrf" => Fusion::Rrf { k: rrf_k },
        "convex" => {
            if !(0.0..=1.0).contains(&alpha) {
                bail!("--alpha must be between 0 and 1");
            }
            Fusion::Convex { alpha }
        }
        "zscore" => {
            if !(0.0..=1.0).contains(&alpha) {
                bail!("--alpha must be between 0 and 1");
            }
            Fusion::ZScore { alpha }
        }
        other => bail!("unknown fusion {other:?} (rrf, convex or zscore)"),
    })
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let data_dir = g.data_dir()?;
    let (_, cut) = overseer_index::truncate_query(&a.query);
    if cut {
        eprintln!(
            "warning: query longer than {} characters; only the start is used",
            overseer_index::MAX_QUERY_CHARS
        );
    }
    if a.k == 0 || a.k > overseer_index::MAX_K {
        bail!("--k must be between 1 and {}", overseer_index::MAX_K);
    }
    let embedder = super::ingest::load_embedder(g)?;
    let index = Index::open(&data_dir, embedder)?;
    if index.stats()?.docs == 0 {
        bail!(
            "the index in {} is empty: run `overseer ingest PATH...` first",
            data_dir.display()
        );
    }
    let req = SearchRequest {
        query: a.query.clone(),
        k: a.k,
        mode: a.mode,
        fusion: fusion_of(&a.fusion, a.alpha, a.rrf_k)?,
        filters: Filters {
            source: a.source,
            author: a.author,
            tag: a.tag,
            since: a.since,
            until: a.until,
        },
        chunk_level: a.chunks,
        depth: a.depth,
        ..SearchRequest::new(a.query.clone(), a.k)
    };
    let hits = index.search(&req)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "results": hits }))?
        );
        return Ok(());
    }
    if hits.is_empty() {
        println!("no results");
        return Ok(());
    }
    let bold = std::io::stdout().is_terminal();
    for (i, h) in hits.iter().enumerate() {
        println!("{}. {}  [{:.4}]", i + 1, h.title, h.score);
        let mut meta = Vec::new();
        if !h.authors.is_empty() {
            meta.push(h.authors.join(", "));
        }
        if let Some(d) = &h.date {
            meta.push(d.get(..10).unwrap_or(d).to_string());
        }
        meta.push(h.source.clone());
        println!("   {}", meta.join(" · "));
        if let Some(u) = &h.url {
            println!("   {u}");
        }
        if !h.passage.heading_path.is_empty() {
            println!("   § {}", h.passage.heading_path.join(" > "));
        }
        println!("   {}", snippet(&a.query, &h.passage.text, bold));
        println!();
    }
    Ok(())
}

/// Up to ~400 characters of the passage around the first query term, with query
/// terms wrapped in ANSI bold (or `**` when not on a terminal).
fn snippet(query: &str, text: &str, ansi: bool) -> String {
    const WIDTH: usize = 400;
    let spans = overseer_index::highlight_spans(query, text);
    let first = spans.first().map_or(0, |r| r.start);
    let mut start = first.saturating_sub(WIDTH / 4);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + WIDTH).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    let (on, off) = if ansi {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("**", "**")
    };
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let mut at = start;
    for r in spans.iter().filter(|r| r.start >= start && r.end <= end) {
        out.push_str(&text[at..r.start]);
        out.push_str(on);
        out.push_str(&text[r.clone()]);
        out.push_str(off);
        at = r.end;
    }
    out.push_str(&text[at..end]);
    if end < text.len() {
        out.push('…');
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
