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
use overseer_rag::{AskRequest, Mode, quality};
use serde::{Deserialize, Serialize};

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

#[derive(Deserialize)]
struct Question {
    id: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    question: String,
    #[serde(default = "yes")]
    answerable: bool,
    #[serde(default)]
    relevant: Vec<String>,
    #[serde(default)]
    key_points: Vec<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// What is scored of an answer: the `overseer ask --json` fields.
#[derive(Deserialize, Serialize, Clone)]
struct Stored {
    #[serde(default)]
    id: String,
    answer: String,
    #[serde(default)]
    abstained: bool,
    #[serde(default)]
    fallback: bool,
    #[serde(default)]
    citations: Vec<StoredCitation>,
    #[serde(default)]
    timings: StoredTimings,
    /// Generated sentences the pipeline dropped as unsupported (absent in answers of
    /// other pipelines).
    #[serde(default)]
    dropped_sentences: usize,
    #[serde(default)]
    kept_sentences: Option<usize>,
    /// Whether a relevant document was among the sources.
    #[serde(default)]
    retrieval_hit: Option<bool>,
    /// Best cosine similarity of a source to the question (the abstention signal).
    #[serde(default)]
    relevance: Option<f32>,
    /// Key-point recall of the evidence the model saw (what a faithful answer could
    /// reach at most).
    #[serde(default)]
    evidence_key_point_recall: Option<f64>,
}

#[derive(Deserialize, Serialize, Clone)]
struct StoredCitation {
    n: u32,
    #[serde(default)]
    title: String,
    #[serde(default)]
    passage: String,
    #[serde(default)]
    quotes: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Default)]
struct StoredTimings {
    #[serde(default)]
    first_token_ms: f64,
    #[serde(default)]
    total_ms: f64,
}

#[derive(Serialize)]
struct Row {
    id: String,
    kind: String,
    answerable: bool,
    abstained: bool,
    fallback: bool,
    copy_ratio: Option<f64>,
    key_point_recall: Option<f64>,
    cites: bool,
    /// Citation numbers that name a listed citation / all citation numbers.
    citation_validity: Option<f64>,
    /// Generated sentences kept (supported) / generated sentences.
    supported_share: Option<f64>,
    junk: Option<quality::Junk>,
    words: usize,
    retrieval_hit: Option<bool>,
    relevance: Option<f32>,
    evidence_key_point_recall: Option<f64>,
    first_token_ms: f64,
    total_ms: f64,
    answer: String,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct Summary {
    questions: usize,
    errors: usize,
    /// Over answered (not abstained) answerable questions unless said otherwise.
    answered: usize,
    median_copy_ratio: Option<f64>,
    median_copy_ratio_generated: Option<f64>,
    mean_key_point_recall: Option<f64>,
    /// Key-point recall over all answerable questions (an abstention scores 0).
    mean_key_point_recall_all: Option<f64>,
    /// Key-point recall of the evidence shown, over answered answerable questions.
    mean_evidence_key_point_recall: Option<f64>,
    share_citing: Option<f64>,
    share_all_citations_valid: Option<f64>,
    supported_share: Option<f64>,
    junk: usize,
    fallback: usize,
    abstention_unanswerable: Option<f64>,
    abstention_near_field: Option<f64>,
    false_abstention: Option<f64>,
    median_words: Option<f64>,
    retrieval_hit: Option<f64>,
    median_first_token_ms: Option<f64>,
    median_total_ms: Option<f64>,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
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

/// Score one answer against its question.
fn score(q: &Question, a: &Stored) -> Row {
    let passages: Vec<String> = a
        .citations
        .iter()
        .map(|c| format!("{}\n{}", c.passage, c.quotes.join("\n")))
        .collect();
    let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
    let listed: Vec<u32> = a.citations.iter().map(|c| c.n).collect();
    let marks: Vec<u32> = overseer_rag::parse_citations(&a.answer)
        .into_iter()
        .flat_map(|m| m.numbers)
        .collect();
    let valid = marks.iter().filter(|n| listed.contains(n)).count();
    let answered = !a.abstained;
    let kept = a.kept_sentences;
    Row {
        id: q.id.clone(),
        kind: q.kind.clone().unwrap_or_else(|| {
            if q.answerable {
                "answerable"
            } else {
                "unanswerable"
            }
            .to_string()
        }),
        answerable: q.answerable,
        abstained: a.abstained,
        fallback: a.fallback,
        copy_ratio: answered.then(|| quality::copy_ratio(&a.answer, &refs)),
        key_point_recall: if q.answerable {
            if a.abstained {
                (!q.key_points.is_empty()).then_some(0.0)
            } else {
                quality::key_point_recall(&a.answer, &q.key_points)
            }
        } else {
            None
        },
        cites: valid > 0,
        citation_validity: ratio(valid, marks.len()),
        supported_share: kept.and_then(|k| ratio(k, k + a.dropped_sentences)),
        junk: if answered {
            quality::junk(&a.answer)
        } else {
            None
        },
        words: quality::words(&a.answer).len(),
        retrieval_hit: if q.relevant.is_empty() {
            None
        } else {
            a.retrieval_hit
        },
        relevance: a.relevance,
        evidence_key_point_recall: a.evidence_key_point_recall,
        first_token_ms: a.timings.first_token_ms,
        total_ms: a.timings.total_ms,
        answer: a.answer.clone(),
        error: None,
    }
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

fn error_row(q: &Question, e: String) -> Row {
    Row {
        id: q.id.clone(),
        kind: q.kind.clone().unwrap_or_default(),
        answerable: q.answerable,
        abstained: false,
        fallback: false,
        copy_ratio: None,
        key_point_recall: None,
        cites: false,
        citation_validity: None,
        supported_share: None,
        junk: None,
        words: 0,
        retrieval_hit: None,
        relevance: None,
        evidence_key_point_recall: None,
        first_token_ms: 0.0,
        total_ms: 0.0,
        answer: String::new(),
        error: Some(e),
    }
}

fn summarize(rows: &[Row]) -> Summary {
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let ans: Vec<&&Row> = ok.iter().filter(|r| r.answerable).collect();
    let answered: Vec<&&Row> = ans.iter().copied().filter(|r| !r.abstained).collect();
    let unans: Vec<&&Row> = ok.iter().filter(|r| !r.answerable).collect();
    let near: Vec<&&Row> = unans
        .iter()
        .copied()
        .filter(|r| r.kind == "near-field")
        .collect();
    let not_abstained: Vec<&&Row> = ok.iter().filter(|r| !r.abstained).collect();
    let kept: Vec<f64> = answered.iter().filter_map(|r| r.supported_share).collect();
    Summary {
        questions: rows.len(),
        errors: rows.len() - ok.len(),
        answered: answered.len(),
        median_copy_ratio: median(answered.iter().filter_map(|r| r.copy_ratio).collect()),
        median_copy_ratio_generated: median(
            answered
                .iter()
                .filter(|r| !r.fallback)
                .filter_map(|r| r.copy_ratio)
                .collect(),
        ),
        mean_key_point_recall: mean(
            &answered
                .iter()
                .filter_map(|r| r.key_point_recall)
                .collect::<Vec<_>>(),
        ),
        mean_key_point_recall_all: mean(
            &ans.iter()
                .filter_map(|r| r.key_point_recall)
                .collect::<Vec<_>>(),
        ),
        mean_evidence_key_point_recall: mean(
            &answered
                .iter()
                .filter_map(|r| r.evidence_key_point_recall)
                .collect::<Vec<_>>(),
        ),
        share_citing: ratio(answered.iter().filter(|r| r.cites).count(), answered.len()),
        share_all_citations_valid: ratio(
            answered
                .iter()
                .filter(|r| r.cites && r.citation_validity == Some(1.0))
                .count(),
            answered.len(),
        ),
        supported_share: mean(&kept),
        junk: not_abstained.iter().filter(|r| r.junk.is_some()).count(),
        fallback: not_abstained.iter().filter(|r| r.fallback).count(),
        abstention_unanswerable: ratio(unans.iter().filter(|r| r.abstained).count(), unans.len()),
        abstention_near_field: ratio(near.iter().filter(|r| r.abstained).count(), near.len()),
        false_abstention: ratio(ans.iter().filter(|r| r.abstained).count(), ans.len()),
        median_words: median(answered.iter().map(|r| r.words as f64).collect()),
        retrieval_hit: {
            let named: Vec<bool> = ok.iter().filter_map(|r| r.retrieval_hit).collect();
            ratio(named.iter().filter(|h| **h).count(), named.len())
        },
        median_first_token_ms: median(ok.iter().map(|r| r.first_token_ms).collect()),
        median_total_ms: median(ok.iter().map(|r| r.total_ms).collect()),
    }
}
