//! `overseer eval answers`: is each answer an answer? For each question of a JSONL file
//! (`eval/answers/README.md` describes the fields) it asks the assistant, or reads
//! answers stored by another pipeline (`--from`, one `overseer ask --json` object per
//! line with the question's `id`), and reports per answer and in summary what a reader
//! would judge: copy ratio (share of words in runs of 12+ words found verbatim in the
//! cited passages), key-point recall, whether it cites and every number names a
//! source, share of generated sentences supported by the evidence, junk (our source
//! headers pasted, a loop, under 10 words), abstention on unanswerable questions and
//! false abstention on answerable ones, words, time to first token and total time.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use overseer_rag::eval::{Question, Stored, StoredTimings, error_row, score, summarize};
use overseer_rag::{AskRequest, Mode, quality};
use serde::Deserialize;

use super::ask::{LlmArgs, build_assistant};
use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Question file (JSONL, see eval/answers/README.md).
    #[arg(long, default_value = "eval/answers/questions.jsonl")]
    pub questions: PathBuf,
    /// Which half of the set: dev (tune on it), test (held out) or all.
    #[arg(long, default_value = "all", value_parser = ["dev", "test", "all"])]
    pub split: String,
    /// Score stored answers instead of asking: JSONL, one `overseer ask --json` object
    /// per line plus the question's `id`.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Stop before generation: report what retrieval finds (abstention, retrieval hit,
    /// key-point recall of the evidence itself). Fast; for tuning evidence selection.
    #[arg(long, conflicts_with = "from")]
    pub evidence_only: bool,
    /// Write every answer (the `--from` format) to this file as well.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the first N questions (after the split filter).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Documents to draw evidence from per question.
    #[arg(long, short, default_value_t = 5)]
    pub k: usize,
    /// Answer style.
    #[arg(long, default_value = "default", value_parser = ["default", "concise", "rookie"])]
    pub mode: String,
    #[command(flatten)]
    pub llm: LlmArgs,
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<Vec<T>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}: not {what}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let mode: Mode = a.mode.parse()?;
    let mut questions: Vec<Question> = read_jsonl(&a.questions, "a question object")?;
    if a.split != "all" {
        questions.retain(|q| q.split.as_deref() == Some(a.split.as_str()));
    }
    if let Some(n) = a.limit {
        questions.truncate(n);
    }
    if questions.is_empty() {
        bail!(
            "{} holds no questions of split {}",
            a.questions.display(),
            a.split
        );
    }
    let mut rows = Vec::new();
    let mut saved: Vec<Stored> = Vec::new();
    if let Some(from) = &a.from {
        let stored: Vec<Stored> = read_jsonl(from, "an answer object")?;
        for q in &questions {
            match stored.iter().find(|s| s.id == q.id) {
                Some(s) => rows.push(score(q, s)),
                None => rows.push(error_row(q, "no stored answer".into())),
            }
        }
    } else if a.evidence_only {
        let assistant = build_assistant(g, &a.llm)?;
        for (i, q) in questions.iter().enumerate() {
            eprintln!("[{}/{}] {}", i + 1, questions.len(), q.question);
            match assistant.find(&q.question, a.k, None) {
                Ok(f) => {
                    let notes: Vec<String> = f.evidence.iter().map(|e| e.text()).collect();
                    let s = Stored {
                        id: q.id.clone(),
                        answer: notes.join("\n"),
                        abstained: f.evidence.is_empty(),
                        fallback: false,
                        citations: Vec::new(),
                        timings: StoredTimings {
                            first_token_ms: f.retrieval_ms + f.gate_ms,
                            total_ms: f.retrieval_ms + f.gate_ms,
                        },
                        dropped_sentences: 0,
                        kept_sentences: None,
                        retrieval_hit: Some(
                            f.evidence.iter().any(|e| q.relevant.contains(&e.source.id)),
                        ),
                        relevance: Some(f.relevance),
                        evidence_key_point_recall: quality::key_point_recall(
                            &notes.join("\n"),
                            &q.key_points,
                        ),
                    };
                    rows.push(score(q, &s));
                }
                Err(e) => rows.push(error_row(q, format!("{e:#}"))),
            }
        }
    } else {
        let assistant = build_assistant(g, &a.llm)?;
        for (i, q) in questions.iter().enumerate() {
            eprintln!("[{}/{}] {}", i + 1, questions.len(), q.question);
            let req = AskRequest {
                question: q.question.clone(),
                mode,
                k: a.k,
                followups: false,
                ..AskRequest::default()
            };
            match assistant.ask(&req, &mut |_| {}) {
                Ok(ans) => {
                    let mut s: Stored = serde_json::from_value(serde_json::to_value(&ans)?)?;
                    s.id = q.id.clone();
                    s.dropped_sentences = ans.dropped_sentences.len();
                    s.kept_sentences =
                        (!ans.abstained && !ans.fallback).then_some(ans.sentences.len());
                    s.retrieval_hit = Some(ans.sources.iter().any(|x| q.relevant.contains(&x.id)));
                    s.relevance = Some(ans.relevance);
                    let notes: Vec<String> = ans.evidence.iter().map(|e| e.text()).collect();
                    s.evidence_key_point_recall =
                        quality::key_point_recall(&notes.join("\n"), &q.key_points);
                    rows.push(score(q, &s));
                    saved.push(s);
                }
                Err(e) => rows.push(error_row(q, format!("{e:#}"))),
            }
        }
    }
    if let Some(path) = &a.save {
        let mut out = String::new();
        for s in &saved {
            out.push_str(&serde_json::to_string(s)?);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let summary = summarize(&rows);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"summary": summary, "questions": rows})
            )?
        );
        return Ok(());
    }
    println!(
        "{:<28} {:<10} {:>4} {:>4} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6} {:>6}",
        "question", "kind", "abst", "fb", "copy", "kp", "cite", "supp", "words", "ttft_s", "tot_s"
    );
    for r in &rows {
        println!(
            "{:<28} {:<10} {:>4} {:>4} {:>5} {:>5} {:>5} {:>5} {:>5} {:>6.1} {:>6.1}{}{}",
            r.id.chars().take(28).collect::<String>(),
            r.kind.chars().take(10).collect::<String>(),
            if r.abstained { "yes" } else { "no" },
            if r.fallback { "yes" } else { "no" },
            num(r.copy_ratio, 2),
            num(r.key_point_recall, 2),
            if r.cites { "yes" } else { "no" },
            num(r.supported_share, 2),
            r.words,
            r.first_token_ms / 1000.0,
            r.total_ms / 1000.0,
            r.junk.map_or(String::new(), |j| format!("  junk: {j:?}")),
            r.error
                .as_deref()
                .map_or(String::new(), |e| format!("  error: {e}")),
        );
    }
    let s = &summary;
    println!();
    println!(
        "questions                    {} ({} errors)",
        s.questions, s.errors
    );
    println!("answered (answerable)        {}", s.answered);
    println!(
        "median copy ratio            {} (generated answers only: {})",
        num(s.median_copy_ratio, 3),
        num(s.median_copy_ratio_generated, 3)
    );
    println!(
        "key-point recall             {} (abstentions as 0: {})",
        num(s.mean_key_point_recall, 3),
        num(s.mean_key_point_recall_all, 3)
    );
    println!(
        "evidence key-point recall    {}",
        num(s.mean_evidence_key_point_recall, 3)
    );
    println!("answers citing               {}", pct(s.share_citing));
    println!(
        "every citation valid         {}",
        pct(s.share_all_citations_valid)
    );
    println!("generated sentences kept     {}", pct(s.supported_share));
    println!("junk answers                 {}", s.junk);
    println!("extractive fallbacks         {}", s.fallback);
    println!(
        "abstained, unanswerable      {} (near-field: {})",
        pct(s.abstention_unanswerable),
        pct(s.abstention_near_field)
    );
    println!("abstained, answerable        {}", pct(s.false_abstention));
    println!("median words                 {}", num(s.median_words, 0));
    println!("retrieval hit                {}", pct(s.retrieval_hit));
    println!(
        "median first token {} s, median total {} s",
        num(s.median_first_token_ms.map(|v| v / 1000.0), 2),
        num(s.median_total_ms.map(|v| v / 1000.0), 2)
    );
    Ok(())
}
