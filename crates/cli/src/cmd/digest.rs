//! `overseer digest`: a newsletter of new work in the index, grouped by the research
//! agenda's 18 challenges (or `--topics FILE`), with summaries in the model's own
//! words, as Markdown, HTML, JSON or Atom. Without a window it covers what was
//! ingested since the last such run (the watermark in `DATA_DIR/digests/`), so a
//! weekly cron job just runs `overseer digest`.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use indicatif::{ProgressBar, ProgressStyle};
use overseer_index::Index;
use overseer_rag::Backend;
use overseer_rag::digest::{
    self, DigestOptions, DigestProgress, Format, Selection, SummaryCache, Taxonomy, Watermark,
    store,
};

use super::ask::BackendArgs;
use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Items published on or after this date (YYYY-MM-DD).
    #[arg(long, conflicts_with_all = ["week", "all"])]
    pub since: Option<String>,
    /// Items published on or before this date (YYYY-MM-DD).
    #[arg(long, conflicts_with_all = ["week", "all"])]
    pub until: Option<String>,
    /// Items published in this ISO week (e.g. 2026-W49: Monday to Sunday).
    #[arg(long, conflicts_with = "all")]
    pub week: Option<String>,
    /// Every indexed item, whatever its date; the watermark is neither read nor moved.
    #[arg(long)]
    pub all: bool,
    /// With a date window (--since/--until/--week): whether items without a publication
    /// date are included. Default: exclude (they cannot be placed in a window). Without
    /// a window every item is taken, dated or not.
    #[arg(long, value_parser = ["include", "exclude"], default_value = "exclude")]
    pub undated: String,
    /// Only the documents whose ids this file lists (one per line).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Only documents of this source (e.g. alignment_newsletter).
    #[arg(long)]
    pub source: Option<String>,
    /// Topic file: a JSON list of {id, title, description, category?, examples?}
    /// [default: the research agenda's 18 challenges].
    #[arg(long)]
    pub topics: Option<PathBuf>,
    /// Items whose best topic is less similar than this (cosine, 0..1) go to "Other"
    /// [default: 0.3, tuned for the built-in agenda; short topic descriptions without
    /// examples score lower, see docs/DIGEST.md].
    #[arg(long)]
    pub min_similarity: Option<f32>,
    /// Skip the summaries (classification and ranking only; no model is loaded).
    #[arg(long)]
    pub no_summaries: bool,
    /// Most highlights across the digest.
    #[arg(long, default_value_t = 3)]
    pub highlights: usize,
    /// Title of the digest.
    #[arg(long, default_value = "Alignment digest")]
    pub title: String,
    /// Output format.
    #[arg(long, value_parser = ["md", "html", "json", "atom"], default_value = "md")]
    pub format: String,
    /// Write the digest to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Do not save the digest in the data dir (the web app lists saved digests).
    #[arg(long)]
    pub no_save: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

fn date(s: &str, flag: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .with_context(|| format!("{flag} takes a date as YYYY-MM-DD, not `{s}`"))
}

/// Monday and Sunday of an ISO week written `YYYY-Www`.
pub fn week(s: &str) -> Result<(NaiveDate, NaiveDate)> {
    let bad = || anyhow::anyhow!("--week takes an ISO week as YYYY-Www (e.g. 2026-W49), not `{s}`");
    let (y, w) = s.trim().split_once("-W").ok_or_else(bad)?;
    let y: i32 = y.parse().map_err(|_| bad())?;
    let w: u32 = w.parse().map_err(|_| bad())?;
    let mon = NaiveDate::from_isoywd_opt(y, w, chrono::Weekday::Mon).ok_or_else(bad)?;
    let sun = NaiveDate::from_isoywd_opt(y, w, chrono::Weekday::Sun).ok_or_else(bad)?;
    Ok((mon, sun))
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let format: Format = a.format.parse()?;
    let data_dir = g.data_dir()?;
    let taxonomy = match &a.topics {
        Some(p) => Taxonomy::load(p)?,
        None => Taxonomy::agenda(),
    };
    let index = Index::open(&data_dir, super::ingest::load_embedder(g)?)
        .with_context(|| format!("cannot open the index in {}", data_dir.display()))?;

    let mut sel = Selection {
        undated: a.undated == "include",
        source: a.source.clone(),
        ..Selection::default()
    };
    if let Some(w) = &a.week {
        let (mon, sun) = week(w)?;
        sel.since = Some(mon);
        sel.until = Some(sun);
    }
    if let Some(s) = &a.since {
        sel.since = Some(date(s, "--since")?);
    }
    if let Some(u) = &a.until {
        sel.until = Some(date(u, "--until")?);
    }
    if let (Some(s), Some(u)) = (sel.since, sel.until)
        && s > u
    {
        bail!("the window is empty: --since {s} is after --until {u}");
    }
    if let Some(p) = &a.ids {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let ids: HashSet<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        sel.ids = Some(ids);
    }
    // The default mode: what was ingested since the last digest of this mode.
    let watermark_mode = !a.all && sel.since.is_none() && sel.until.is_none() && sel.ids.is_none();
    let sequence = index.sequence();
    if watermark_mode && let Some(w) = store::read_watermark(&data_dir)? {
        sel.from_sequence = Some(w.sequence);
    }

    let backend: Option<std::sync::Arc<dyn Backend>> = if a.no_summaries {
        None
    } else {
        Some(super::ask::build_backend(g, &a.backend)?)
    };
    let mut cache = SummaryCache::open(&data_dir)?;
    let mut opts = DigestOptions {
        summaries: !a.no_summaries,
        highlights: a.highlights,
        title: a.title.clone(),
        ..DigestOptions::default()
    };
    if let Some(m) = a.min_similarity {
        if !(0.0..=1.0).contains(&m) {
            bail!("--min-similarity must be between 0 and 1");
        }
        opts.classify.min_similarity = m;
    }

    let show = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut d = digest::build(
        &index,
        &taxonomy,
        &sel,
        &opts,
        backend.as_deref(),
        Some(&mut cache),
        &mut |p| match p {
            DigestProgress::Selected(n) => {
                bar.set_message("selected");
                bar.set_length(n as u64);
                bar.set_position(n as u64);
            }
            DigestProgress::Ranked { done, total } => {
                bar.set_message("ranked");
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            DigestProgress::Summarized { done, total } => {
                bar.set_message("summarized");
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
        },
    )?;
    bar.finish_and_clear();

    if !a.no_save {
        store::save(&data_dir, &mut d)?;
    }
    if watermark_mode {
        store::write_watermark(
            &data_dir,
            &Watermark {
                sequence,
                digest: d.id.clone(),
            },
        )?;
    }
    let text = digest::render(&d, format);
    match &a.out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    let s = &d.stats;
    eprintln!(
        "digest {}: {} items ({} other, {} uncertain), {} summaries ({} cached, {} fallbacks); select {} ms, rank {} ms, summaries {} ms",
        d.id,
        s.items,
        s.other,
        s.uncertain,
        s.summarized,
        s.summaries_cached,
        s.summary_fallbacks,
        s.select_ms,
        s.rank_ms,
        s.summarize_ms
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_weeks_run_monday_to_sunday() {
        let (m, s) = week("2026-W49").unwrap();
        assert_eq!(m.to_string(), "2026-11-30");
        assert_eq!(s.to_string(), "2026-12-06");
        assert!(week("2026-49").is_err());
        assert!(week("2026-W54").is_err());
    }
}
