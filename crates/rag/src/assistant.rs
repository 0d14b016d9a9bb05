//! The question-answering pipeline:
//! question → (follow-up rewrite) → retrieval → relevance gate → answerability (the
//! question's specific terms must occur in what was retrieved) → evidence sentences →
//! generation in the model's own words (copies of the evidence and loops blocked at
//! decode time) → per-sentence citations from grounding (a sentence no evidence
//! supports is dropped) → quality checks, with a labelled extractive fallback →
//! follow-ups the evidence answers. Every stage is timed.
//!
//! Sentences reach the caller as they are finished and cited, so what streams is what
//! the final answer says; only a fallback or a late abstention replaces it
//! ([`AskEvent::Replace`]).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overseer_index::Embedder;
use serde::Serialize;

use crate::answerable;
use crate::backend::{Backend, GenParams};
use crate::evidence::{self, Evidence, EvidenceConfig};
use crate::grounding::{GroundingConfig, SentenceSupport};
use crate::prompt::{self, ABSTAIN_ANSWER, FALLBACK_LABEL, Mode};
use crate::quality::{self, Junk};
use crate::retrieve::{Query, Retriever, Source};
use crate::text::{content_words, dot, lexical_overlap, sentences, truncate_bytes};
use crate::{Error, Result, citations};

/// The longest question accepted, in characters.
pub const MAX_QUESTION_CHARS: usize = 4000;

/// Tuning of the pipeline. `Default` holds the calibrated values.
#[derive(Debug, Clone)]
pub struct AssistantConfig {
    /// With an embedder: abstain when no source's cosine similarity to the question
    /// reaches this.
    pub min_relevance: f32,
    /// Without an embedder: abstain when no source holds this share of the question's
    /// content words.
    pub min_lexical_relevance: f32,
    /// When a sentence counts as supported by a piece of evidence.
    pub grounding: GroundingConfig,
    /// Which evidence sentences the model sees.
    pub evidence: EvidenceConfig,
    /// Most tokens spent on evidence (on top of the model's window limit).
    pub max_context_tokens: usize,
    /// Length in words of a run copied from the evidence that decoding blocks (0: off).
    pub copy_ngram: usize,
    /// Length in tokens of a repeat of the answer's own words that decoding blocks
    /// (0: off).
    pub repeat_ngram: usize,
    /// An answer with a larger copy ratio gives way to the extractive fallback.
    pub max_copy_ratio: f64,
    /// Sampling temperature (0 = greedy) and seed.
    pub temperature: f32,
    pub seed: u64,
    /// How many earlier turns the answer prompt sees.
    pub history_turns: usize,
    /// Override of the mode's answer length.
    pub max_answer_tokens: Option<usize>,
}

impl Default for AssistantConfig {
    fn default() -> Self {
        Self {
            min_relevance: 0.35,
            min_lexical_relevance: 0.5,
            grounding: GroundingConfig::default(),
            evidence: EvidenceConfig::default(),
            max_context_tokens: 1200,
            copy_ngram: 8,
            repeat_ngram: 5,
            max_copy_ratio: 0.5,
            temperature: 0.0,
            seed: 42,
            history_turns: 2,
            max_answer_tokens: None,
        }
    }
}

/// One question.
#[derive(Debug, Clone, Default)]
pub struct AskRequest {
    pub question: String,
    /// Earlier (question, answer) turns, oldest first; non-empty means the question
    /// may be a follow-up and is rewritten into a standalone one for retrieval.
    pub history: Vec<(String, String)>,
    pub mode: Mode,
    /// Documents to draw evidence from at most (default 5).
    pub k: usize,
    /// Restrict retrieval to one source/corpus name.
    pub source: Option<String>,
    /// Whether to suggest follow-up questions (one extra, short generation).
    pub followups: bool,
}

/// Progress of an answer, in order: `Rewritten`?, `Retrieved`, `Token`*, `Replace`?,
/// `Citations`, `Followups`, `Done`.
#[derive(Debug, Clone)]
pub enum AskEvent {
    /// The follow-up was rewritten into this standalone question.
    Rewritten(String),
    /// The numbered sources the evidence comes from (`hits[i]` is `[i + 1]`).
    Retrieved {
        hits: Vec<Source>,
    },
    /// A piece of the answer: finished, cited sentences.
    Token(String),
    /// Everything streamed so far is replaced by this text (the extractive fallback,
    /// or an abstention decided after generation).
    Replace(String),
    /// The sources the final answer cites.
    Citations(Vec<Citation>),
    Followups(Vec<String>),
    Done,
}

/// A source cited by the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Citation {
    /// The number used in the answer text.
    pub n: u32,
    pub id: String,
    pub title: String,
    pub authors: Vec<String>,
    pub date: Option<String>,
    pub url: String,
    /// The retrieved passage the evidence was taken from.
    pub passage: String,
    /// Char offsets of the passage in the document text.
    pub passage_start: usize,
    pub passage_end: usize,
    /// The sentences of the passage the model was shown.
    pub quotes: Vec<String>,
    /// Whether some sentence of the answer is supported by this source (always true
    /// for generated answers: citations come from grounding).
    pub supported: bool,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub rewrite_ms: f64,
    pub retrieval_ms: f64,
    /// Relevance gate and evidence selection (embedding question and sentences).
    pub relevance_ms: f64,
    /// Prompt processing: from the generation call to the model's first token.
    pub prompt_ms: f64,
    /// Token generation after the first token.
    pub generation_ms: f64,
    /// From the start of `ask` to the first answer text the reader gets.
    pub first_token_ms: f64,
    /// Citing sentences (embedding each against the evidence).
    pub grounding_ms: f64,
    pub followups_ms: f64,
    pub total_ms: f64,
    pub prompt_tokens: Option<usize>,
    pub answer_tokens: usize,
}

/// A finished answer. Serialises to the `overseer ask --json` shape:
/// `{answer, abstained, fallback, citations, followups, timings}`; the other fields
/// are for Rust callers (the evaluation, the terminal renderer).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The answer: cited sentences (`[n]`), the extractive fallback, or an abstention.
    pub answer: String,
    /// True when the sources did not answer the question.
    pub abstained: bool,
    /// True when the answer is the labelled extractive fallback (quotes from the
    /// evidence) because the generated one failed the checks.
    pub fallback: bool,
    /// The cited sources, by number.
    pub citations: Vec<Citation>,
    pub followups: Vec<String>,
    pub timings: Timings,
    /// The question used for retrieval (rewritten for follow-ups).
    #[serde(skip)]
    pub standalone_question: String,
    /// All numbered sources the evidence came from.
    #[serde(skip)]
    pub sources: Vec<Source>,
    /// The evidence the model saw, by number.
    #[serde(skip)]
    pub evidence: Vec<Evidence>,
    /// The best relevance of any source to the question (cosine, or lexical overlap
    /// without an embedder).
    #[serde(skip)]
    pub relevance: f32,
    /// Whether `relevance` is a cosine similarity (else lexical overlap).
    #[serde(skip)]
    pub relevance_is_cosine: bool,
    /// Specific terms of the question that nothing retrieved mentions.
    #[serde(skip)]
    pub missing_terms: Vec<String>,
    /// The answer as generated.
    #[serde(skip)]
    pub raw_answer: String,
    /// Why the generated answer was rejected, when it was.
    #[serde(skip)]
    pub rejected: Option<Rejection>,
    /// Generated sentences dropped because no evidence supports them.
    #[serde(skip)]
    pub dropped_sentences: Vec<String>,
    /// Grounding verdicts of the kept sentences.
    #[serde(skip)]
    pub sentences: Vec<SentenceSupport>,
}

/// What retrieval found for a question, before any generation ([`Assistant::find`]).
#[derive(Debug, Clone)]
pub struct Findings {
    /// The evidence the model would see, by number; empty when the assistant abstains.
    pub evidence: Vec<Evidence>,
    /// The best relevance of a top document's passage to the question.
    pub relevance: f32,
    /// Whether `relevance` is a cosine similarity (else lexical overlap).
    pub relevance_is_cosine: bool,
    /// Specific terms of the question nothing retrieved mentions.
    pub missing_terms: Vec<String>,
    /// The best passage of each top document (what an abstention names instead).
    pub nearby: Vec<Source>,
    pub retrieval_ms: f64,
    /// Relevance gate, answerability and evidence selection.
    pub gate_ms: f64,
}

/// Why a generated answer gave way to the extractive fallback.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Junk: source headers, a loop, or too short.
    Junk(Junk),
    /// Too much of it copied verbatim from the evidence.
    Copied,
    /// No sentence of it is supported by the evidence.
    Unsupported,
}

/// Answers questions from a retriever with a backend.
pub struct Assistant {
    retriever: Arc<dyn Retriever>,
    backend: Arc<dyn Backend>,
    embedder: Option<Arc<dyn Embedder>>,
    config: AssistantConfig,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// The abstention text: what is missing, and what the sources cover instead.
fn abstain_text(missing: &[String], sources: &[Source]) -> String {
    let mut out = ABSTAIN_ANSWER.to_string();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|m| format!("“{m}”")).collect();
        out.push_str(&format!(
            " Nothing I retrieved mentions {}.",
            list.join(" or ")
        ));
    }
    let mut titles: Vec<&str> = Vec::new();
    for s in sources {
        let t = s.title.trim();
        if !t.is_empty() && !titles.contains(&t) {
            titles.push(t);
        }
        if titles.len() == 3 {
            break;
        }
    }
    if !titles.is_empty() {
        let list: Vec<String> = titles.iter().map(|t| format!("“{t}”")).collect();
        out.push_str(&format!(
            " The closest documents I have are {}.",
            list.join(", ")
        ));
    }
    out
}

/// Insert a citation group before a sentence's closing punctuation.
fn with_citation(sentence: &str, cites: &[u32]) -> String {
    if cites.is_empty() {
        return sentence.to_string();
    }
    let marks = format!(
        "[{}]",
        cites
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let body = sentence.trim_end();
    let cut = body.trim_end_matches(['.', '!', '?', ':', ';']).len();
    let (head, punct) = body.split_at(cut);
    format!("{} {marks}{punct}", head.trim_end())
}

/// Builds the answer sentence by sentence as text streams in.
struct Writer<'a> {
    evidence: &'a [Evidence],
    evidence_words: Vec<std::collections::HashSet<String>>,
    embedder: Option<&'a dyn Embedder>,
    cfg: &'a GroundingConfig,
    /// Raw text not yet split off as a finished sentence.
    pending: String,
    /// The answer so far, as the reader got it.
    out: String,
    kept: Vec<SentenceSupport>,
    dropped: Vec<String>,
    /// Time spent citing.
    grounding: Duration,
}

impl<'a> Writer<'a> {
    fn new(
        evidence: &'a [Evidence],
        embedder: Option<&'a dyn Embedder>,
        cfg: &'a GroundingConfig,
    ) -> Self {
        Self {
            evidence,
            evidence_words: evidence.iter().map(|e| content_words(&e.text())).collect(),
            embedder,
            cfg,
            pending: String::new(),
            out: String::new(),
            kept: Vec::new(),
            dropped: Vec::new(),
            grounding: Duration::ZERO,
        }
    }

    /// Add generated text; returns the text that became final.
    fn push(&mut self, piece: &str) -> Result<String> {
        self.pending.push_str(piece);
        let mut emitted = String::new();
        loop {
            let ss = sentences(&self.pending);
            if ss.len() < 2 {
                break;
            }
            let (start, end) = (ss[0].start, ss[0].end);
            let next = ss[1].start;
            let gap = self.pending[end..next].to_string();
            let sentence = self.pending[start..end].to_string();
            self.pending.drain(..next);
            emitted.push_str(&self.finish_sentence(&sentence, &gap)?);
        }
        Ok(emitted)
    }

    /// The end of generation: the rest is the last sentence.
    fn finish(&mut self) -> Result<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(String::new());
        }
        self.finish_sentence(rest, "")
    }

    /// Cite one sentence from the evidence, or drop it. `gap` is the whitespace that
    /// followed it (a paragraph break is kept).
    fn finish_sentence(&mut self, sentence: &str, gap: &str) -> Result<String> {
        let t = Instant::now();
        let claim = quality::strip_citations(sentence)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let claim = claim.replace(" .", ".").replace(" ,", ",");
        if claim.split_whitespace().count() < 3 {
            return Ok(String::new());
        }
        let words = content_words(&claim);
        let vec = match self.embedder {
            Some(e) => e.embed(&[claim.as_str()])?.pop(),
            None => None,
        };
        let mut scored: Vec<(u32, Option<f32>, f32, bool)> = Vec::new();
        for (i, e) in self.evidence.iter().enumerate() {
            let overlap = lexical_overlap(&words, &self.evidence_words[i]);
            let sim = vec
                .as_ref()
                .map(|v| e.vectors.iter().map(|u| dot(v, u)).fold(f32::MIN, f32::max));
            let ok = self.cfg.supports(sim, overlap);
            scored.push(((i + 1) as u32, sim, overlap, ok));
        }
        self.grounding += t.elapsed();
        let mut support: Vec<&(u32, Option<f32>, f32, bool)> =
            scored.iter().filter(|s| s.3).collect();
        support.sort_by(|a, b| {
            let ka = a.1.unwrap_or(a.2);
            let kb = b.1.unwrap_or(b.2);
            kb.total_cmp(&ka)
        });
        if support.is_empty() {
            self.dropped.push(claim);
            return Ok(String::new());
        }
        let mut cites: Vec<u32> = support.iter().take(2).map(|s| s.0).collect();
        cites.sort_unstable();
        let text = with_citation(&claim, &cites);
        let sep = if self.out.is_empty() || self.out.ends_with('\n') {
            ""
        } else {
            " "
        };
        let start = self.out.len() + sep.len();
        let piece = format!("{sep}{text}");
        self.out.push_str(&piece);
        self.kept.push(SentenceSupport {
            start,
            end: start + text.len(),
            text: text.clone(),
            cites: cites.clone(),
            scores: scored
                .into_iter()
                .filter(|s| cites.contains(&s.0))
                .collect(),
            supported: true,
        });
        let mut emitted = piece;
        if gap.contains("\n\n") {
            self.out.push_str("\n\n");
            emitted.push_str("\n\n");
        }
        Ok(emitted)
    }
}

/// The extractive fallback: the best evidence sentences, quoted and cited.
fn extractive(evidence: &[Evidence]) -> String {
    let mut best: Vec<(f32, usize, &str)> = Vec::new();
    for (i, e) in evidence.iter().enumerate() {
        for (s, score) in e.sentences.iter().zip(&e.scores) {
            best.push((*score, i, s));
        }
    }
    best.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = String::from(FALLBACK_LABEL);
    let mut per = vec![0; evidence.len()];
    let mut n = 0;
    for (_, i, s) in best {
        if per[i] >= 2 || n >= 3 {
            continue;
        }
        per[i] += 1;
        n += 1;
        out.push_str(&format!(" “{}” [{}]", s.trim(), i + 1));
    }
    out
}

impl Assistant {
    /// An assistant. `embedder` (the index's) powers the relevance gate, evidence
    /// selection and citation; without it all three fall back to lexical overlap.
    pub fn new(
        retriever: Arc<dyn Retriever>,
        backend: Arc<dyn Backend>,
        embedder: Option<Arc<dyn Embedder>>,
        config: AssistantConfig,
    ) -> Self {
        Self {
            retriever,
            backend,
            embedder,
            config,
        }
    }

    pub fn config(&self) -> &AssistantConfig {
        &self.config
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Answer `req`, reporting progress through `events`. Errors: invalid or too long
    /// question, empty index, retrieval or backend failures.
    pub fn ask(&self, req: &AskRequest, events: &mut dyn FnMut(AskEvent)) -> Result<Answer> {
        let t0 = Instant::now();
        let question = req.question.trim();
        if question.is_empty() {
            return Err(Error::InvalidArgument("the question is empty".into()));
        }
        let chars = question.chars().count();
        if chars > MAX_QUESTION_CHARS {
            return Err(Error::QuestionTooLong {
                chars,
                max: MAX_QUESTION_CHARS,
            });
        }
        let k = if req.k == 0 { 5 } else { req.k.min(20) };
        if self.retriever.document_count()? == 0 {
            return Err(Error::EmptyIndex);
        }
        let mut timings = Timings::default();
        let history: Vec<(String, String)> = req
            .history
            .iter()
            .rev()
            .take(self.config.history_turns)
            .rev()
            .map(|(q, a)| {
                (
                    truncate_bytes(q, 600).to_string(),
                    truncate_bytes(a, 800).to_string(),
                )
            })
            .collect();

        // 1. Follow-ups become standalone questions for retrieval.
        let mut standalone = question.to_string();
        if !history.is_empty() {
            let t = Instant::now();
            let reply = self.backend.chat(
                &prompt::rewrite_messages(question, &history),
                &self.params(64),
                &mut |_| ControlFlow::Continue(()),
            )?;
            standalone = match prompt::parse_rewrite(&reply.text) {
                Some(q) => q,
                // The model's rewrite was unusable: retrieve with the previous
                // question as context instead.
                None => format!("{} {question}", history[history.len() - 1].0),
            };
            timings.rewrite_ms = ms(t.elapsed());
            events(AskEvent::Rewritten(standalone.clone()));
        }

        // 2–4. Retrieval, relevance gate, answerability and evidence.
        let found = self.find(&standalone, k, req.source.as_deref())?;
        timings.retrieval_ms = found.retrieval_ms;
        timings.relevance_ms = found.gate_ms;
        let mut answer = Answer {
            answer: String::new(),
            abstained: false,
            fallback: false,
            citations: Vec::new(),
            followups: Vec::new(),
            timings: Timings::default(),
            standalone_question: standalone.clone(),
            sources: found.evidence.iter().map(|e| e.source.clone()).collect(),
            evidence: found.evidence,
            relevance: found.relevance,
            relevance_is_cosine: found.relevance_is_cosine,
            missing_terms: found.missing_terms,
            raw_answer: String::new(),
            rejected: None,
            dropped_sentences: Vec::new(),
            sentences: Vec::new(),
        };
        events(AskEvent::Retrieved {
            hits: answer.sources.clone(),
        });
        if answer.evidence.is_empty() {
            tracing::info!(
                "abstaining: relevance {:.3}, missing {:?}",
                answer.relevance,
                answer.missing_terms
            );
            let text = abstain_text(&answer.missing_terms, &found.nearby);
            return Ok(self.finish_abstained(answer, text, timings, t0, events));
        }

        // 5. Generation, cited sentence by sentence as it streams.
        let max_tokens = self
            .config
            .max_answer_tokens
            .unwrap_or(req.mode.max_tokens());
        let messages = prompt::answer_messages(question, &answer.evidence, req.mode, &history);
        let mut params = self.params(max_tokens);
        params.min_tokens = req.mode.min_tokens().min(max_tokens / 2);
        params.copy_ngram = self.config.copy_ngram;
        params.repeat_ngram = self.config.repeat_ngram;
        params.avoid_copying = answer
            .evidence
            .iter()
            .flat_map(|e| e.sentences.iter().cloned())
            .collect();
        let gen_start = Instant::now();
        let mut writer = Writer::new(
            &answer.evidence,
            self.embedder.as_deref(),
            &self.config.grounding,
        );
        let mut first_emit: Option<Duration> = None;
        let mut failure: Option<Error> = None;
        let completion = self.backend.chat(&messages, &params, &mut |piece| {
            match writer.push(piece) {
                Ok(text) if !text.is_empty() => {
                    first_emit.get_or_insert_with(|| t0.elapsed());
                    events(AskEvent::Token(text));
                }
                Ok(_) => {}
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let last = writer.finish()?;
        if !last.is_empty() {
            first_emit.get_or_insert_with(|| t0.elapsed());
            events(AskEvent::Token(last));
        }
        let first = completion.first_token.unwrap_or(completion.total);
        timings.prompt_ms = ms(first);
        timings.generation_ms = ms(completion.total.saturating_sub(first));
        timings.first_token_ms = ms(first_emit.unwrap_or_else(|| t0.elapsed()));
        timings.prompt_tokens = completion.prompt_tokens;
        timings.answer_tokens = completion.completion_tokens;
        timings.grounding_ms = ms(writer.grounding);
        let _ = gen_start;

        // 6. Checks: a refusal abstains; junk, copies and unsupported answers give way
        // to the extractive fallback.
        let raw = completion.text.trim().to_string();
        answer.raw_answer = raw.clone();
        answer.dropped_sentences = std::mem::take(&mut writer.dropped);
        answer.sentences = std::mem::take(&mut writer.kept);
        let text = std::mem::take(&mut writer.out).trim().to_string();
        drop(writer);
        if prompt::is_refusal(&raw) {
            let nearby = answer.sources.clone();
            let text = abstain_text(&[], &nearby);
            events(AskEvent::Replace(text.clone()));
            return Ok(self.finish_abstained(answer, text, timings, t0, events));
        }
        let passages: Vec<String> = answer.evidence.iter().map(|e| e.text()).collect();
        let passage_refs: Vec<&str> = passages.iter().map(String::as_str).collect();
        answer.rejected = if let Some(j) = quality::junk(&raw) {
            Some(Rejection::Junk(j))
        } else if answer.sentences.is_empty() {
            Some(Rejection::Unsupported)
        } else if let Some(j) = quality::junk(&text) {
            Some(Rejection::Junk(j))
        } else if quality::copy_ratio(&text, &passage_refs) > self.config.max_copy_ratio {
            Some(Rejection::Copied)
        } else {
            None
        };
        if let Some(why) = answer.rejected {
            tracing::info!("extractive fallback: {why:?}");
            answer.fallback = true;
            answer.answer = extractive(&answer.evidence);
            answer.sentences.clear();
            events(AskEvent::Replace(answer.answer.clone()));
        } else {
            answer.answer = text;
        }
        let mut cited: Vec<u32> = citations::parse(&answer.answer)
            .into_iter()
            .flat_map(|m| m.numbers)
            .filter(|&n| n >= 1 && n as usize <= answer.evidence.len())
            .collect();
        cited.sort_unstable();
        cited.dedup();
        answer.citations = cited
            .iter()
            .map(|&n| {
                let e = &answer.evidence[n as usize - 1];
                let s = &e.source;
                Citation {
                    n,
                    id: s.id.clone(),
                    title: s.title.clone(),
                    authors: s.authors.clone(),
                    date: s.date.clone(),
                    url: s.url.clone(),
                    passage: s.passage.clone(),
                    passage_start: s.passage_start,
                    passage_end: s.passage_end,
                    quotes: e.sentences.clone(),
                    supported: true,
                }
            })
            .collect();
        events(AskEvent::Citations(answer.citations.clone()));

        // 7. Suggested follow-ups the evidence answers.
        if req.followups {
            let t = Instant::now();
            let reply = self.backend.chat(
                &prompt::followup_messages(&messages, &completion.text),
                &self.params(72),
                &mut |_| ControlFlow::Continue(()),
            );
            match reply {
                Ok(r) => {
                    let candidates = prompt::parse_followups(&r.text, question);
                    answer.followups = self.grounded_followups(candidates, &answer.evidence)?;
                }
                // The answer stands without suggestions.
                Err(e) => tracing::warn!("follow-up suggestions failed: {e}"),
            }
            timings.followups_ms = ms(t.elapsed());
        }
        events(AskEvent::Followups(answer.followups.clone()));
        timings.total_ms = ms(t0.elapsed());
        answer.timings = timings;
        events(AskEvent::Done);
        Ok(answer)
    }

    /// Retrieval up to the evidence, without generating: what [`Assistant::ask`] gives
    /// the model for `question` (a standalone question) drawing on `k` documents.
    /// Empty evidence means the assistant abstains.
    pub fn find(&self, question: &str, k: usize, source: Option<&str>) -> Result<Findings> {
        let k = if k == 0 { 5 } else { k.min(20) };
        // Retrieval: several passages per document, deduplicated later.
        let t = Instant::now();
        let mut hits = self.retriever.retrieve(&Query {
            text: question,
            k: k * 3,
            source,
        })?;
        let retrieval_ms = ms(t.elapsed());

        // Relevance gate on the best passage of each of the top documents.
        let t = Instant::now();
        let mut nearby: Vec<Source> = Vec::new();
        for h in &hits {
            if nearby.len() < k
                && !nearby.iter().any(|s| s.id == h.id)
                && !h.passage.trim().is_empty()
            {
                nearby.push(h.clone());
            }
        }
        let refs: Vec<&Source> = nearby.iter().collect();
        let (relevance, is_cosine, qvec) = self.relevance(question, &refs)?;
        let threshold = if is_cosine {
            self.config.min_relevance
        } else {
            self.config.min_lexical_relevance
        };
        // Answerability: the question's names, numbers and acronyms must occur in what
        // was retrieved.
        let missing_terms = if relevance >= threshold {
            self.missing_terms(question, &mut hits, source)?
        } else {
            Vec::new()
        };
        let mut ecfg = self.config.evidence.clone();
        ecfg.max_documents = k;
        ecfg.max_chars = ecfg.max_chars.min(self.config.max_context_tokens * 4);
        let evidence = if relevance >= threshold && missing_terms.is_empty() {
            evidence::select(
                question,
                &hits,
                self.embedder.as_deref(),
                qvec.as_deref(),
                &ecfg,
            )?
        } else {
            Vec::new()
        };
        Ok(Findings {
            evidence,
            relevance,
            relevance_is_cosine: is_cosine,
            missing_terms,
            nearby,
            retrieval_ms,
            gate_ms: ms(t.elapsed()),
        })
    }

    /// The question's specific terms that no retrieved passage (with its title,
    /// authors and date) mentions. A term missing from the first retrieval gets a
    /// search of its own: passages that mention it join `hits`, so a name that only
    /// appears deeper in a document still counts, and still reaches the evidence.
    fn missing_terms(
        &self,
        question: &str,
        hits: &mut Vec<Source>,
        source: Option<&str>,
    ) -> Result<Vec<String>> {
        let text = |h: &Source| {
            format!(
                "{}\n{}\n{}\n{}",
                h.title,
                h.authors.join(", "),
                h.date.as_deref().unwrap_or(""),
                h.passage
            )
        };
        let missing = |hits: &[Source]| {
            let texts: Vec<String> = hits.iter().map(text).collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            answerable::missing_terms(question, &refs)
        };
        let first = missing(hits);
        if first.is_empty() {
            return Ok(Vec::new());
        }
        let mut still = Vec::new();
        for term in first {
            let query = format!("{term} {question}");
            let found = self.retriever.retrieve(&Query {
                text: &query,
                k: 10,
                source,
            })?;
            let with_term: Vec<Source> = found
                .into_iter()
                .filter(|h| {
                    let t = text(h);
                    answerable::missing_terms(&term.to_string(), &[t.as_str()]).is_empty()
                })
                .collect();
            if with_term.is_empty() {
                still.push(term.to_string());
            } else {
                for h in with_term.into_iter().take(3) {
                    if !hits
                        .iter()
                        .any(|x| x.id == h.id && x.passage_start == h.passage_start)
                    {
                        hits.push(h);
                    }
                }
            }
        }
        // A term found by its own search counts only if the passages that hold it
        // also hold the question's other terms.
        if still.is_empty() {
            return Ok(missing(hits).iter().map(ToString::to_string).collect());
        }
        Ok(still)
    }

    fn finish_abstained(
        &self,
        mut answer: Answer,
        text: String,
        mut timings: Timings,
        t0: Instant,
        events: &mut dyn FnMut(AskEvent),
    ) -> Answer {
        answer.answer = text.clone();
        answer.abstained = true;
        answer.citations.clear();
        answer.sentences.clear();
        if timings.first_token_ms == 0.0 {
            timings.first_token_ms = ms(t0.elapsed());
            events(AskEvent::Token(text));
        }
        events(AskEvent::Citations(Vec::new()));
        events(AskEvent::Followups(Vec::new()));
        timings.total_ms = ms(t0.elapsed());
        answer.timings = timings;
        events(AskEvent::Done);
        answer
    }

    /// Suggestions whose specific terms the evidence mentions and that some evidence
    /// sentence is close to.
    fn grounded_followups(
        &self,
        candidates: Vec<String>,
        evidence: &[Evidence],
    ) -> Result<Vec<String>> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let texts: Vec<String> = evidence
            .iter()
            .map(|e| format!("{}\n{}", e.source.title, e.text()))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vecs = match &self.embedder {
            Some(e) => {
                let c: Vec<&str> = candidates.iter().map(String::as_str).collect();
                Some(e.embed(&c)?)
            }
            None => None,
        };
        let all_words: Vec<_> = refs.iter().map(|t| content_words(t)).collect();
        let mut out = Vec::new();
        for (i, c) in candidates.into_iter().enumerate() {
            if !answerable::missing_terms(&c, &refs).is_empty() {
                continue;
            }
            let close = match &vecs {
                Some(v) => evidence
                    .iter()
                    .flat_map(|e| e.vectors.iter())
                    .any(|u| dot(&v[i], u) >= FOLLOWUP_MIN_SIMILARITY),
                None => {
                    let w = content_words(&c);
                    all_words.iter().any(|e| lexical_overlap(&w, e) >= 0.5)
                }
            };
            if close {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn params(&self, max_tokens: usize) -> GenParams {
        GenParams {
            max_tokens,
            temperature: self.config.temperature,
            seed: self.config.seed,
            ..GenParams::default()
        }
    }

    /// The best relevance of any source to the question (cosine similarity with the
    /// embedder, else the share of question content words found in a source), and the
    /// question's embedding.
    fn relevance(
        &self,
        question: &str,
        sources: &[&Source],
    ) -> Result<(f32, bool, Option<Vec<f32>>)> {
        match &self.embedder {
            Some(e) => {
                let mut texts: Vec<&str> = vec![question];
                texts.extend(sources.iter().map(|s| s.passage.as_str()));
                let mut v = e.embed(&texts)?;
                let q = v.remove(0);
                let best = v
                    .iter()
                    .map(|p| dot(p, &q))
                    .fold(if sources.is_empty() { 0.0 } else { f32::MIN }, f32::max);
                Ok((best, true, Some(q)))
            }
            None => {
                let q = content_words(question);
                let best = sources
                    .iter()
                    .map(|s| {
                        lexical_overlap(&q, &content_words(&format!("{} {}", s.title, s.passage)))
                    })
                    .fold(0.0, f32::max);
                Ok((best, false, None))
            }
        }
    }
}

/// A suggested follow-up must be this close (cosine) to some evidence sentence.
const FOLLOWUP_MIN_SIMILARITY: f32 = 0.45;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::{ChatMessage, ChatRole, Completion};
    use crate::grounding::tests::BowEmbedder;
    use crate::retrieve::tests::src;

    struct MemRetriever(Vec<Source>);
    impl Retriever for MemRetriever {
        fn retrieve(&self, q: &Query<'_>) -> Result<Vec<Source>> {
            // Rank by lexical overlap with the query, like a toy BM25.
            let qw = content_words(q.text);
            let mut v: Vec<(f32, Source)> = self
                .0
                .iter()
                .filter(|s| q.source.is_none_or(|x| x == s.source))
                .map(|s| (lexical_overlap(&qw, &content_words(&s.passage)), s.clone()))
                .filter(|(o, _)| *o > 0.0)
                .collect();
            v.sort_by(|a, b| b.0.total_cmp(&a.0));
            Ok(v.into_iter().take(q.k).map(|(_, s)| s).collect())
        }
        fn document_count(&self) -> Result<usize> {
            Ok(self.0.len())
        }
    }

    /// Replies from a script, recording the prompts and parameters it was given.
    struct Scripted {
        replies: Mutex<Vec<String>>,
        seen: Mutex<Vec<(Vec<ChatMessage>, GenParams)>>,
    }
    impl Scripted {
        fn new(replies: &[&str]) -> Arc<Self> {
            Arc::new(Self {
                replies: Mutex::new(replies.iter().rev().map(|s| s.to_string()).collect()),
                seen: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> Vec<(Vec<ChatMessage>, GenParams)> {
            self.seen.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }
    impl Backend for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        fn context_window(&self) -> usize {
            2048
        }
        fn count_tokens(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
        fn chat(
            &self,
            messages: &[ChatMessage],
            params: &GenParams,
            on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Completion> {
            if let Ok(mut s) = self.seen.lock() {
                s.push((messages.to_vec(), params.clone()));
            }
            let text = self
                .replies
                .lock()
                .ok()
                .and_then(|mut r| r.pop())
                .unwrap_or_default();
            for w in text.split_inclusive(' ') {
                let _ = on_text(w);
            }
            Ok(Completion {
                text,
                completion_tokens: 1,
                ..Completion::default()
            })
        }
    }

    fn corpus() -> Vec<Source> {
        vec![
            src(
                "gh",
                "Gradient hacking",
                "Gradient hacking is when a deceptive mesa-optimizer deliberately influences \
                 its own training gradients to protect its objective. It would let a model \
                 keep a misaligned goal hidden from the training process.",
            ),
            src(
                "rlhf",
                "RLHF",
                "Reinforcement learning from human feedback trains a reward model on human \
                 preference comparisons and optimizes a policy against it.",
            ),
        ]
    }

    fn assistant(backend: Arc<Scripted>, docs: Vec<Source>) -> Assistant {
        Assistant::new(
            Arc::new(MemRetriever(docs)),
            backend,
            Some(Arc::new(BowEmbedder)),
            AssistantConfig {
                min_relevance: 0.2,
                ..AssistantConfig::default()
            },
        )
    }

    fn req(q: &str) -> AskRequest {
        AskRequest {
            question: q.into(),
            k: 5,
            followups: true,
            ..AskRequest::default()
        }
    }

    /// Ask, returning the answer, the event kinds in order (deduplicated) and the
    /// streamed text.
    fn run(a: &Assistant, r: &AskRequest) -> (Answer, Vec<&'static str>, String) {
        let mut streamed = String::new();
        let mut order = Vec::new();
        let ans = a
            .ask(r, &mut |e| {
                order.push(match &e {
                    AskEvent::Rewritten(_) => "rewritten",
                    AskEvent::Retrieved { .. } => "retrieved",
                    AskEvent::Token(t) => {
                        streamed.push_str(t);
                        "token"
                    }
                    AskEvent::Replace(t) => {
                        streamed = t.clone();
                        "replace"
                    }
                    AskEvent::Citations(_) => "citations",
                    AskEvent::Followups(_) => "followups",
                    AskEvent::Done => "done",
                });
            })
            .expect("answer");
        order.dedup();
        (ans, order, streamed)
    }

    #[test]
    fn cites_sentences_from_grounding_and_drops_unsupported_ones() {
        let b = Scripted::new(&[
            "A deceptive mesa-optimizer can influence its own training gradients to protect \
             its objective [2]. Bananas grow on tall trees in warm tropical places [1].",
            "1. Why would a deceptive mesa-optimizer protect its objective from training?\n\
             2. How do bananas grow on tall trees?",
        ]);
        let a = assistant(b.clone(), corpus());
        let (ans, order, streamed) = run(&a, &req("What is gradient hacking?"));
        assert_eq!(
            order,
            vec!["retrieved", "token", "citations", "followups", "done"]
        );
        assert_eq!(streamed, ans.answer, "what streams is the final answer");
        assert!(!ans.abstained && !ans.fallback);
        // The model's own [2] is replaced by the source that supports the sentence.
        assert!(
            ans.answer.ends_with("to protect its objective [1]."),
            "{}",
            ans.answer
        );
        assert!(
            !ans.answer.contains("Bananas"),
            "unsupported sentence dropped"
        );
        assert_eq!(ans.dropped_sentences.len(), 1);
        assert_eq!(ans.citations.len(), 1);
        assert_eq!(ans.citations[0].id, "gh");
        assert!(ans.citations[0].quotes[0].starts_with("Gradient hacking is when"));
        assert_eq!(ans.sentences.len(), 1);
        // Follow-ups: only the one the evidence answers.
        assert_eq!(ans.followups.len(), 1, "{:?}", ans.followups);
        assert!(ans.followups[0].contains("mesa-optimizer"));
        // The prompt gives evidence sentences without our header format, and decoding
        // is told not to copy them.
        let calls = b.calls();
        let (msgs, params) = &calls[0];
        let prompt = &msgs.last().expect("messages").content;
        // The follow-up request continues the answer's conversation, so a backend
        // keeping KV caches feeds only that request.
        let follow = &calls[1].0;
        assert_eq!(follow.len(), msgs.len() + 2);
        assert_eq!(&follow[..msgs.len()], &msgs[..]);
        assert_eq!(follow[msgs.len()].role, ChatRole::Assistant);
        assert!(prompt.contains("[1] Gradient hacking is when"), "{prompt}");
        assert!(!prompt.contains("Ada and Bob"), "{prompt}");
        assert!(params.copy_ngram > 0 && params.repeat_ngram > 0);
        assert!(
            params
                .avoid_copying
                .iter()
                .any(|t| t.contains("mesa-optimizer"))
        );
        let json = serde_json::to_value(&ans).expect("serialises");
        let mut keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "abstained",
                "answer",
                "citations",
                "fallback",
                "followups",
                "timings"
            ]
        );
    }

    #[test]
    fn abstains_without_calling_the_model_when_nothing_is_relevant() {
        let b = Scripted::new(&["should not be used"]);
        let a = assistant(b.clone(), corpus());
        let (ans, _, streamed) = run(&a, &req("What is the boiling point of gallium in Kelvin?"));
        assert!(ans.abstained);
        assert!(ans.answer.starts_with(ABSTAIN_ANSWER));
        assert_eq!(streamed, ans.answer);
        assert!(ans.citations.is_empty());
        assert!(b.calls().is_empty());
    }

    #[test]
    fn abstains_when_the_question_names_what_no_source_mentions() {
        let b = Scripted::new(&["should not be used"]);
        let a = assistant(b.clone(), corpus());
        let (ans, _, _) = run(
            &a,
            &req("What did the Bletchley Declaration say about gradient hacking?"),
        );
        assert!(ans.abstained, "{}", ans.answer);
        assert_eq!(ans.missing_terms, vec!["Bletchley Declaration"]);
        assert!(
            ans.answer.contains("“Bletchley Declaration”"),
            "{}",
            ans.answer
        );
        assert!(
            ans.answer.contains("“Gradient hacking”"),
            "says what is covered"
        );
        assert!(b.calls().is_empty());
        // The same question about a named thing the corpus holds is answered.
        let b = Scripted::new(&["RLHF trains a reward model on human preference comparisons."]);
        let a = assistant(b, corpus());
        let (ans, _, _) = run(&a, &req("How does RLHF train its reward model?"));
        assert!(!ans.abstained, "{}", ans.answer);
    }

    #[test]
    fn model_refusal_counts_as_abstention() {
        let b = Scripted::new(&["The sources don't answer this.", ""]);
        let (ans, order, streamed) =
            run(&assistant(b, corpus()), &req("What is gradient hacking?"));
        assert!(ans.abstained);
        assert!(order.contains(&"replace"));
        assert_eq!(streamed, ans.answer);
    }

    #[test]
    fn pasted_source_headers_give_way_to_the_labelled_fallback() {
        let b = Scripted::new(&[
            "[1] Gradient hacking — Ada and Bob (2020-03-30)\nGradient hacking is when a \
             deceptive mesa-optimizer deliberately influences its own training gradients.",
            "",
        ]);
        let (ans, order, streamed) =
            run(&assistant(b, corpus()), &req("What is gradient hacking?"));
        assert!(ans.fallback && !ans.abstained);
        assert_eq!(ans.rejected, Some(Rejection::Junk(Junk::SourceHeaders)));
        assert!(ans.answer.starts_with(FALLBACK_LABEL), "{}", ans.answer);
        assert!(ans.answer.contains("“Gradient hacking is when"), "quoted");
        assert!(ans.answer.contains("[1]"));
        assert_eq!(ans.citations[0].id, "gh");
        assert!(order.contains(&"replace"));
        assert_eq!(streamed, ans.answer);
    }

    #[test]
    fn follow_ups_are_rewritten_before_retrieval() {
        let b = Scripted::new(&[
            "How does RLHF train a reward model?",
            "It uses human preference comparisons to train the reward model.",
        ]);
        let a = assistant(b.clone(), corpus());
        let mut r = req("How does it train the reward model?");
        r.followups = false;
        r.history = vec![("What is RLHF?".into(), "RLHF is ... [1]".into())];
        let (ans, _, _) = run(&a, &r);
        assert_eq!(
            ans.standalone_question,
            "How does RLHF train a reward model?"
        );
        assert_eq!(ans.sources[0].id, "rlhf");
        let calls = b.calls();
        assert_eq!(calls.len(), 2);
        // The answer prompt carries the conversation.
        assert!(calls[1].0.iter().any(|m| m.content == "What is RLHF?"));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        let b = Scripted::new(&[]);
        let a = assistant(b.clone(), corpus());
        let long = "why ".repeat(MAX_QUESTION_CHARS);
        assert!(matches!(
            a.ask(&req(&long), &mut |_| {}),
            Err(Error::QuestionTooLong { .. })
        ));
        assert!(matches!(
            a.ask(&req("  "), &mut |_| {}),
            Err(Error::InvalidArgument(_))
        ));
        let empty = assistant(b, Vec::new());
        let e = empty.ask(&req("What is RLHF?"), &mut |_| {});
        assert!(matches!(e, Err(Error::EmptyIndex)));
        assert!(
            e.err()
                .is_some_and(|e| e.to_string().contains("overseer ingest"))
        );
    }

    #[test]
    fn citations_go_before_the_closing_punctuation() {
        assert_eq!(with_citation("It works.", &[1, 3]), "It works [1, 3].");
        assert_eq!(with_citation("Does it?", &[2]), "Does it [2]?");
        assert_eq!(with_citation("No stop", &[1]), "No stop [1]");
        assert_eq!(with_citation("Bare.", &[]), "Bare.");
    }
}
