//! The question-answering pipeline:
//! question → (follow-up rewrite) → retrieval → relevance gate (abstain) → context
//! within the token budget → streamed generation → citation cleaning → grounding
//! check → suggested follow-ups. Every stage is timed.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overseer_index::Embedder;
use serde::Serialize;

use crate::backend::{Backend, GenParams};
use crate::grounding::{self, GroundingConfig, SentenceSupport};
use crate::prompt::{self, ABSTAIN_ANSWER, Mode};
use crate::retrieve::{Query, Retriever, Source};
use crate::text::{content_words, lexical_overlap, truncate_bytes};
use crate::{Error, Result, citations, context};

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
    /// Grounding thresholds.
    pub grounding: GroundingConfig,
    /// Most tokens spent on sources (on top of the model's window limit): bounds
    /// prompt processing time on CPU.
    pub max_context_tokens: usize,
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
            max_context_tokens: 1200,
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
    /// Sources to give the model at most (default 5).
    pub k: usize,
    /// Restrict retrieval to one source/corpus name.
    pub source: Option<String>,
    /// Whether to suggest follow-up questions (one extra, short generation).
    pub followups: bool,
}

/// Progress of an answer, in order: `Rewritten`?, `Retrieved`, `Token`*, `Citations`,
/// `Followups`, `Done`.
#[derive(Debug, Clone)]
pub enum AskEvent {
    /// The follow-up was rewritten into this standalone question.
    Rewritten(String),
    /// The numbered sources given to the model.
    Retrieved {
        hits: Vec<Source>,
    },
    /// A piece of the answer as generated (citations not yet cleaned).
    Token(String),
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
    /// The passage the model saw.
    pub passage: String,
    /// Char offsets of the passage in the document text.
    pub passage_start: usize,
    pub passage_end: usize,
    /// Whether some sentence citing `n` is supported by this passage.
    pub supported: bool,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    pub rewrite_ms: f64,
    pub retrieval_ms: f64,
    /// Relevance gate (embedding question and sources).
    pub relevance_ms: f64,
    /// Prompt processing: from the generation call to its first token.
    pub prompt_ms: f64,
    /// Token generation after the first token.
    pub generation_ms: f64,
    /// From the start of `ask` to the first answer token.
    pub first_token_ms: f64,
    pub grounding_ms: f64,
    pub followups_ms: f64,
    pub total_ms: f64,
    pub prompt_tokens: Option<usize>,
    pub answer_tokens: usize,
}

/// A finished answer. Serialises to the `overseer ask --json` shape:
/// `{answer, abstained, citations, followups, timings}`; the other fields are for
/// Rust callers (the evaluation, the terminal renderer).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The answer with citation numbers that name no source removed.
    pub answer: String,
    /// True when the sources did not answer the question (gate or model refusal).
    pub abstained: bool,
    /// The cited sources, by number.
    pub citations: Vec<Citation>,
    pub followups: Vec<String>,
    pub timings: Timings,
    /// The question used for retrieval (rewritten for follow-ups).
    #[serde(skip)]
    pub standalone_question: String,
    /// All numbered sources the model saw.
    #[serde(skip)]
    pub sources: Vec<Source>,
    /// The best relevance of any source to the question (cosine, or lexical overlap
    /// without an embedder).
    #[serde(skip)]
    pub relevance: f32,
    /// Whether `relevance` is a cosine similarity (else lexical overlap).
    #[serde(skip)]
    pub relevance_is_cosine: bool,
    /// The answer as generated.
    #[serde(skip)]
    pub raw_answer: String,
    /// Citation numbers the model used that name no source.
    #[serde(skip)]
    pub invalid_citations: Vec<u32>,
    /// All citation numbers in the raw answer (with repeats).
    #[serde(skip)]
    pub citation_marks: usize,
    /// Citation numbers in the raw answer that name no source (with repeats).
    #[serde(skip)]
    pub invalid_citation_marks: usize,
    /// Grounding verdicts for cited sentences.
    #[serde(skip)]
    pub sentences: Vec<SentenceSupport>,
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

impl Assistant {
    /// An assistant. `embedder` (the index's) powers the relevance gate and the
    /// semantic grounding check; without it both fall back to lexical overlap.
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
            let params = GenParams {
                max_tokens: 64,
                ..self.params(64)
            };
            let reply = self.backend.chat(
                &prompt::rewrite_messages(question, &history),
                &params,
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

        // 2. Retrieval: more candidates than needed, deduplicated by document later.
        let t = Instant::now();
        let hits = self.retriever.retrieve(&Query {
            text: &standalone,
            k: k * 3,
            source: req.source.as_deref(),
        })?;
        timings.retrieval_ms = ms(t.elapsed());

        // 3. Context within the budget.
        let max_tokens = self
            .config
            .max_answer_tokens
            .unwrap_or(req.mode.max_tokens());
        let overhead = self
            .backend
            .count_tokens(&prompt::overhead_text(question, req.mode, &history));
        let window = self.backend.context_window();
        let needed = overhead + max_tokens + 16;
        if needed >= window {
            return Err(Error::ContextTooSmall { window, needed });
        }
        let budget = (window - needed).min(self.config.max_context_tokens);
        let backend = &self.backend;
        let sources = context::assemble(&hits, budget, k, &|s| backend.count_tokens(s));
        events(AskEvent::Retrieved {
            hits: sources.clone(),
        });

        // 4. Relevance gate.
        let t = Instant::now();
        let (relevance, is_cosine) = self.relevance(&standalone, &sources)?;
        timings.relevance_ms = ms(t.elapsed());
        let threshold = if is_cosine {
            self.config.min_relevance
        } else {
            self.config.min_lexical_relevance
        };
        let mut answer = Answer {
            answer: String::new(),
            abstained: false,
            citations: Vec::new(),
            followups: Vec::new(),
            timings: Timings::default(),
            standalone_question: standalone.clone(),
            sources: sources.clone(),
            relevance,
            relevance_is_cosine: is_cosine,
            raw_answer: String::new(),
            invalid_citations: Vec::new(),
            citation_marks: 0,
            invalid_citation_marks: 0,
            sentences: Vec::new(),
        };
        if sources.is_empty() || relevance < threshold {
            tracing::info!("abstaining: best relevance {relevance:.3} < {threshold}");
            answer.answer = ABSTAIN_ANSWER.to_string();
            answer.raw_answer = ABSTAIN_ANSWER.to_string();
            answer.abstained = true;
            timings.first_token_ms = ms(t0.elapsed());
            events(AskEvent::Token(ABSTAIN_ANSWER.to_string()));
            events(AskEvent::Citations(Vec::new()));
            events(AskEvent::Followups(Vec::new()));
            timings.total_ms = ms(t0.elapsed());
            answer.timings = timings;
            events(AskEvent::Done);
            return Ok(answer);
        }

        // 5. Generation, streamed.
        let messages = prompt::answer_messages(question, &sources, req.mode, &history);
        let gen_start = Instant::now();
        let completion = self
            .backend
            .chat(&messages, &self.params(max_tokens), &mut |piece| {
                events(AskEvent::Token(piece.to_string()));
                ControlFlow::Continue(())
            })?;
        let first = completion.first_token.unwrap_or(completion.total);
        timings.prompt_ms = ms(first);
        timings.generation_ms = ms(completion.total.saturating_sub(first));
        timings.first_token_ms = ms((gen_start - t0) + first);
        timings.prompt_tokens = completion.prompt_tokens;
        timings.answer_tokens = completion.completion_tokens;

        // 6. Citations and grounding.
        let t = Instant::now();
        let raw = completion.text.trim().to_string();
        let cleaned = citations::clean(&raw, sources.len());
        let sentences = grounding::check(
            &cleaned.text,
            &sources,
            self.embedder.as_deref(),
            &self.config.grounding,
        )?;
        let mut cited = cleaned.cited.clone();
        cited.sort_unstable();
        answer.citations = cited
            .iter()
            .map(|&n| {
                let s = &sources[n as usize - 1];
                let supported = sentences
                    .iter()
                    .any(|st| st.scores.iter().any(|&(m, _, _, ok)| m == n && ok));
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
                    supported,
                }
            })
            .collect();
        answer.abstained = cited.is_empty() && prompt::is_refusal(&cleaned.text);
        answer.answer = cleaned.text;
        answer.raw_answer = raw;
        answer.invalid_citations = cleaned.invalid;
        answer.citation_marks = cleaned.total_marks;
        answer.invalid_citation_marks = cleaned.invalid_marks;
        answer.sentences = sentences;
        timings.grounding_ms = ms(t.elapsed());
        events(AskEvent::Citations(answer.citations.clone()));

        // 7. Suggested follow-ups.
        if req.followups && !answer.abstained && !answer.answer.is_empty() {
            let t = Instant::now();
            let reply = self.backend.chat(
                &prompt::followup_messages(&standalone, &answer.answer, &sources),
                &self.params(72),
                &mut |_| ControlFlow::Continue(()),
            );
            match reply {
                Ok(r) => answer.followups = prompt::parse_followups(&r.text, question),
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

    fn params(&self, max_tokens: usize) -> GenParams {
        GenParams {
            max_tokens,
            temperature: self.config.temperature,
            seed: self.config.seed,
            stop: Vec::new(),
        }
    }

    /// The best relevance of any source to the question: cosine similarity with the
    /// embedder, else the share of question content words found in a source.
    fn relevance(&self, question: &str, sources: &[Source]) -> Result<(f32, bool)> {
        if sources.is_empty() {
            return Ok((0.0, self.embedder.is_some()));
        }
        match &self.embedder {
            Some(e) => {
                let mut texts: Vec<&str> = vec![question];
                texts.extend(sources.iter().map(|s| s.passage.as_str()));
                let v = e.embed(&texts)?;
                let best = v[1..]
                    .iter()
                    .map(|p| p.iter().zip(&v[0]).map(|(a, b)| a * b).sum::<f32>())
                    .fold(f32::MIN, f32::max);
                Ok((best, true))
            }
            None => {
                let q = content_words(question);
                let best = sources
                    .iter()
                    .map(|s| {
                        lexical_overlap(&q, &content_words(&format!("{} {}", s.title, s.passage)))
                    })
                    .fold(0.0, f32::max);
                Ok((best, false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::{ChatMessage, Completion};
    use crate::context::tests::src;
    use crate::grounding::tests::BowEmbedder;

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

    /// Replies from a script, recording the prompts it was given.
    struct Scripted {
        replies: Mutex<Vec<String>>,
        seen: Mutex<Vec<Vec<ChatMessage>>>,
    }
    impl Scripted {
        fn new(replies: &[&str]) -> Arc<Self> {
            Arc::new(Self {
                replies: Mutex::new(replies.iter().rev().map(|s| s.to_string()).collect()),
                seen: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> Vec<Vec<ChatMessage>> {
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
            _: &GenParams,
            on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Completion> {
            if let Ok(mut s) = self.seen.lock() {
                s.push(messages.to_vec());
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
                 its own training gradients to protect its objective.",
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

    #[test]
    fn answers_with_clean_citations_and_followups() {
        let b = Scripted::new(&[
            "Gradient hacking is when a deceptive mesa-optimizer influences its own training \
             gradients [1, 7]. Bananas grow on trees [1].",
            "1. What is a mesa-optimizer?\n2. How could gradient hacking be detected?",
        ]);
        let a = assistant(b.clone(), corpus());
        let mut tokens = String::new();
        let mut order = Vec::new();
        let ans = a
            .ask(&req("What is gradient hacking?"), &mut |e| {
                order.push(match &e {
                    AskEvent::Rewritten(_) => "rewritten",
                    AskEvent::Retrieved { .. } => "retrieved",
                    AskEvent::Token(t) => {
                        tokens.push_str(t);
                        "token"
                    }
                    AskEvent::Citations(_) => "citations",
                    AskEvent::Followups(_) => "followups",
                    AskEvent::Done => "done",
                });
            })
            .expect("answer");
        order.dedup();
        assert_eq!(
            order,
            vec!["retrieved", "token", "citations", "followups", "done"]
        );
        assert!(tokens.contains("[1, 7]"), "streamed raw text");
        assert!(!ans.abstained);
        assert_eq!(ans.invalid_citations, vec![7]);
        assert!(ans.answer.contains("gradients [1]."), "{}", ans.answer);
        // Every [n] left in the answer has a citation entry, and only cited ones are listed.
        let listed: Vec<u32> = ans.citations.iter().map(|c| c.n).collect();
        for m in crate::citations::parse(&ans.answer) {
            for n in m.numbers {
                assert!(listed.contains(&n));
            }
        }
        let gh = ans
            .citations
            .iter()
            .find(|c| c.id == "gh")
            .expect("gh cited");
        assert!(gh.supported);
        assert_eq!(ans.sentences.len(), 2);
        assert!(ans.sentences[0].supported && !ans.sentences[1].supported);
        assert_eq!(ans.followups.len(), 2);
        // The prompt numbered the best source first.
        let prompt = &b.calls()[0];
        assert!(
            prompt
                .last()
                .is_some_and(|m| m.content.contains("[1] Gradient hacking"))
        );
        let json = serde_json::to_value(&ans).expect("serialises");
        let mut keys: Vec<&String> = json.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec!["abstained", "answer", "citations", "followups", "timings"]
        );
    }

    #[test]
    fn abstains_without_calling_the_model_when_nothing_is_relevant() {
        let b = Scripted::new(&["should not be used"]);
        let a = assistant(b.clone(), corpus());
        let ans = a
            .ask(
                &req("What is the boiling point of gallium in Kelvin?"),
                &mut |_| {},
            )
            .expect("answer");
        assert!(ans.abstained);
        assert_eq!(ans.answer, ABSTAIN_ANSWER);
        assert!(ans.citations.is_empty());
        assert!(b.calls().is_empty());
    }

    #[test]
    fn model_refusal_counts_as_abstention() {
        let b = Scripted::new(&["The sources don't answer this.", ""]);
        let ans = assistant(b, corpus()).ask(&req("What is gradient hacking?"), &mut |_| {});
        assert!(ans.expect("answer").abstained);
    }

    #[test]
    fn follow_ups_are_rewritten_before_retrieval() {
        let b = Scripted::new(&[
            "How does RLHF train a reward model?",
            "It uses comparisons [1].",
        ]);
        let a = assistant(b.clone(), corpus());
        let mut r = req("How does it train the reward model?");
        r.followups = false;
        r.history = vec![("What is RLHF?".into(), "RLHF is ... [1]".into())];
        let ans = a.ask(&r, &mut |_| {}).expect("answer");
        assert_eq!(
            ans.standalone_question,
            "How does RLHF train a reward model?"
        );
        assert_eq!(ans.sources[0].id, "rlhf");
        let calls = b.calls();
        assert_eq!(calls.len(), 2);
        // The answer prompt carries the conversation.
        assert!(calls[1].iter().any(|m| m.content == "What is RLHF?"));
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
}
