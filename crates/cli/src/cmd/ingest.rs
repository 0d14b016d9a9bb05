//! `overseer ingest`: add ARD JSONL, markdown, HTML, PDF and text to the index, with a
//! progress bar on stderr and a summary at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use overseer_index::{ChunkOptions, Embedder, IngestOptions, MiniLm, Progress};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or folders: ARD .jsonl, .md, .html, .pdf, .txt (folders are walked).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Remove documents that vanished from the given sources.
    #[arg(long)]
    pub prune: bool,
    /// Delete the existing index first (after an upgrade or an embedder change).
    #[arg(long)]
    pub reset: bool,
    /// Most embedder tokens per chunk.
    #[arg(long, default_value_t = 224)]
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks of a long section.
    #[arg(long, default_value_t = 32)]
    pub chunk_overlap: usize,
    /// Largest single document, in MiB: one JSONL line, one markdown, HTML or text
    /// file, the text of one PDF. Larger ones are listed as failures.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_record_mb: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Load the default embedder (all-MiniLM-L6-v2 from the models folder).
pub fn load_embedder(g: &Global) -> Result<Arc<dyn Embedder>> {
    let dir = g.embedder_dir()?;
    let m = MiniLm::load(&dir, g.threads())
        .with_context(|| format!("loading the embedding model from {}", dir.display()))?;
    Ok(Arc::new(m))
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn begin(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    // A mistyped path stops the run before the index is touched.
    if let Some(p) = a.paths.iter().find(|p| !p.exists()) {
        bail!("{}: no such file or folder", p.display());
    }
    let data_dir = g.data_dir()?;
    let embedder = load_embedder(g)?;
    let bar = ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} ingest [{bar:30}] {pos}/{len} records  {per_sec}  eta {eta}  {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let opts = IngestOptions {
        prune: a.prune,
        reset: a.reset,
        chunk: ChunkOptions {
            max_tokens: a.chunk_tokens,
            overlap_tokens: a.chunk_overlap,
        },
        max_record_bytes: usize::try_from(a.max_record_mb << 20)
            .context("--max-record-mb is too large for this machine")?,
        ..IngestOptions::default()
    };
    let s = overseer_index::ingest(&data_dir, &a.paths, embedder, &opts, &Bar(bar.clone()));
    bar.finish_and_clear();
    let s = s?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        eprintln!(
            "ingested in {:.1}s: {} added, {} updated, {} skipped (unchanged), {} removed, {} failed; {} new chunks; index now {} documents, {} chunks",
            s.seconds,
            s.added,
            s.updated,
            s.skipped,
            s.removed,
            s.failed.len(),
            s.chunks_added,
            s.docs,
            s.chunks
        );
        const SHOW: usize = 20;
        for f in s.failed.iter().take(SHOW) {
            eprintln!("  failed {}: {}", f.location, f.reason);
        }
        if s.failed.len() > SHOW {
            eprintln!(
                "  ... and {} more (use --json for all)",
                s.failed.len() - SHOW
            );
        }
        for n in &s.notes {
            eprintln!("  note: {n}");
        }
    }
    if !s.failed.is_empty() && s.added + s.updated + s.skipped == 0 {
        bail!(
            "nothing was ingested: all {} input(s) failed",
            s.failed.len()
        );
    }
    Ok(())
}
