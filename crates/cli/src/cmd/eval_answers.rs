//! `overseer eval answers`: how grounded are the answers? For each question of a JSONL
//! file (`{"id", "question", "answerable": bool, "relevant": [doc ids]}`) it asks the
//! assistant and reports citation validity (cited numbers exist), citation support
//! (cited sentences supported by their passage), abstention (on unanswerable
//! questions, and wrongly on answerable ones) and retrieval hit (a relevant document
//! among the sources), per question and overall, plus the relevance scores that the
//! abstention threshold is calibrated on.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use overseer_rag::{AskRequest, Mode};
use serde::{Deserialize, Serialize};

use super::ask::{LlmArgs, build_assistant};
use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Question file (JSONL): {"id", "question", "answerable", "relevant": [doc ids]}.
    #[arg(long, default_value = "eval/answers/questions.jsonl")]
    pub questions: PathBuf,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the first N questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sources per question.
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
    question: String,
    #[serde(default = "yes")]
    answerable: bool,
    #[serde(default)]
    relevant: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Row {
    id: String,
    answerable: bool,
    abstained: bool,
    /// Best cosine similarity of a source to the question (the abstention signal).
    relevance: f32,
    /// Valid citation numbers / all citation numbers; null when the answer cites nothing.
    citation_validity: Option<f64>,
    cited_sentences: usize,
    supported_sentences: usize,
    /// A relevant document among the sources; null when the question names none.
    retrieval_hit: Option<bool>,
    first_token_ms: f64,
    total_ms: f64,
    answer: String,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct Summary {
    questions: usize,
    errors: usize,
    /// Share of citation numbers (over all answers) that name a source.
    citation_validity: Option<f64>,
    /// Share of cited sentences supported by a cited passage.
    citation_support: Option<f64>,
    /// Share of answered (non-abstained) answerable questions with at least one citation.
    cited_answer_rate: Option<f64>,
    /// Share of unanswerable questions where the assistant abstained.
    abstention_unanswerable: Option<f64>,
    /// Share of answerable questions where it abstained (lower is better).
    abstention_answerable: Option<f64>,
    /// Share of questions naming relevant documents with one among the sources.
    retrieval_hit: Option<f64>,
    /// Relevance ranges, for calibrating the abstention threshold.
    relevance_answerable_min: Option<f32>,
    relevance_unanswerable_max: Option<f32>,
    mean_first_token_ms: f64,
    mean_total_ms: f64,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let mode: Mode = a.mode.parse()?;
    let file = std::fs::File::open(&a.questions)
        .with_context(|| format!("cannot open {}", a.questions.display()))?;
    let mut questions = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", a.questions.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not a question object",
                a.questions.display(),
                i + 1
            )
        })?;
        questions.push(q);
    }
    if let Some(n) = a.limit {
        questions.truncate(n);
    }
    if questions.is_empty() {
        bail!("{} holds no questions", a.questions.display());
    }
    let assistant = build_assistant(g, &a.llm)?;
    let mut rows = Vec::new();
    for (i, q) in questions.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, questions.len(), q.question);
        let req = AskRequest {
            question: q.question.clone(),
            mode,
            k: a.k,
            followups: false,
            ..AskRequest::default()
        };
        let row = match assistant.ask(&req, &mut |_| {}) {
            Ok(ans) => {
                let valid = ans.citation_marks - ans.invalid_citation_marks;
                Row {
                    id: q.id.clone(),
                    answerable: q.answerable,
                    abstained: ans.abstained,
                    relevance: ans.relevance,
                    citation_validity: ratio(valid, ans.citation_marks),
                    cited_sentences: ans.sentences.len(),
                    supported_sentences: ans.sentences.iter().filter(|s| s.supported).count(),
                    retrieval_hit: (!q.relevant.is_empty())
                        .then(|| ans.sources.iter().any(|s| q.relevant.contains(&s.id))),
                    first_token_ms: ans.timings.first_token_ms,
                    total_ms: ans.timings.total_ms,
                    answer: ans.answer,
                    error: None,
                }
            }
            Err(e) => Row {
                id: q.id.clone(),
                answerable: q.answerable,
                abstained: false,
                relevance: 0.0,
                citation_validity: None,
                cited_sentences: 0,
                supported_sentences: 0,
                retrieval_hit: None,
                first_token_ms: 0.0,
                total_ms: 0.0,
                answer: String::new(),
                error: Some(format!("{e:#}")),
            },
        };
        rows.push(row);
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
        "{:<26} {:>5} {:>6} {:>5} {:>9} {:>9} {:>5} {:>8}",
        "question", "ans?", "rel", "abst", "validity", "support", "hit", "total_s"
    );
    for r in &rows {
        println!(
            "{:<26} {:>5} {:>6.3} {:>5} {:>9} {:>9} {:>5} {:>8.1}{}",
            r.id.chars().take(26).collect::<String>(),
            if r.answerable { "yes" } else { "no" },
            r.relevance,
            if r.abstained { "yes" } else { "no" },
            pct(r.citation_validity),
            if r.cited_sentences == 0 {
                "n/a".into()
            } else {
                format!("{}/{}", r.supported_sentences, r.cited_sentences)
            },
            r.retrieval_hit
                .map_or("n/a", |h| if h { "yes" } else { "no" }),
            r.total_ms / 1000.0,
            r.error
                .as_deref()
                .map_or(String::new(), |e| format!("  error: {e}")),
        );
    }
    let s = &summary;
    println!();
    println!(
        "questions               {} ({} errors)",
        s.questions, s.errors
    );
    println!("citation validity       {}", pct(s.citation_validity));
    println!("citation support        {}", pct(s.citation_support));
    println!("answers with citations  {}", pct(s.cited_answer_rate));
    println!("abstained, unanswerable {}", pct(s.abstention_unanswerable));
    println!("abstained, answerable   {}", pct(s.abstention_answerable));
    println!("retrieval hit           {}", pct(s.retrieval_hit));
    println!(
        "relevance: answerable min {:?}, unanswerable max {:?}",
        s.relevance_answerable_min, s.relevance_unanswerable_max
    );
    println!(
        "mean first token {:.0} ms, mean total {:.0} ms",
        s.mean_first_token_ms, s.mean_total_ms
    );
    Ok(())
}

fn summarize(rows: &[Row]) -> Summary {
    let ok: Vec<&Row> = rows.iter().filter(|r| r.error.is_none()).collect();
    let (mut valid_num, mut valid_den) = (0.0, 0usize);
    for r in &ok {
        if let Some(v) = r.citation_validity {
            // Weight by answers: each answer with citations counts once.
            valid_num += v;
            valid_den += 1;
        }
    }
    let cited: usize = ok.iter().map(|r| r.cited_sentences).sum();
    let supported: usize = ok.iter().map(|r| r.supported_sentences).sum();
    let ans: Vec<&&Row> = ok.iter().filter(|r| r.answerable).collect();
    let unans: Vec<&&Row> = ok.iter().filter(|r| !r.answerable).collect();
    let answered: Vec<&&&Row> = ans.iter().filter(|r| !r.abstained).collect();
    let named: Vec<bool> = ok.iter().filter_map(|r| r.retrieval_hit).collect();
    let n = ok.len().max(1) as f64;
    Summary {
        questions: rows.len(),
        errors: rows.len() - ok.len(),
        citation_validity: (valid_den > 0).then(|| valid_num / valid_den as f64),
        citation_support: ratio(supported, cited),
        cited_answer_rate: ratio(
            answered.iter().filter(|r| r.cited_sentences > 0).count(),
            answered.len(),
        ),
        abstention_unanswerable: ratio(unans.iter().filter(|r| r.abstained).count(), unans.len()),
        abstention_answerable: ratio(ans.iter().filter(|r| r.abstained).count(), ans.len()),
        retrieval_hit: ratio(named.iter().filter(|h| **h).count(), named.len()),
        relevance_answerable_min: ans.iter().map(|r| r.relevance).reduce(f32::min),
        relevance_unanswerable_max: unans.iter().map(|r| r.relevance).reduce(f32::max),
        mean_first_token_ms: ok.iter().map(|r| r.first_token_ms).sum::<f64>() / n,
        mean_total_ms: ok.iter().map(|r| r.total_ms).sum::<f64>() / n,
    }
}
