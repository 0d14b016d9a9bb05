//! `overseer-rag`: grounded, cited answers from the literature index.
//!
//! [`Assistant::ask`] runs the pipeline (rewrite follow-ups, retrieve, gate on
//! relevance and answerability, pick evidence sentences, generate an answer in the
//! model's own words, cite each sentence from grounding, fall back to labelled quotes
//! when the answer fails the checks, suggest follow-ups) over a [`Retriever`] (the
//! literature index) and a [`Backend`] (the embedded model or an OpenAI-compatible
//! server). [`quality`] holds the measures the pipeline and its evaluation share.

mod answerable;
mod assistant;
mod backend;
mod citations;
pub mod digest;
mod error;
pub mod eval;
mod evidence;
mod grounding;
mod injection;
mod prompt;
pub mod quality;
mod retrieve;
mod text;
mod wiring;

pub use answerable::{Term, missing_terms, specific_terms};
pub use assistant::{
    Answer, AskEvent, AskRequest, Assistant, AssistantConfig, Citation, Findings,
    MAX_QUESTION_CHARS, Rejection, Timings,
};
pub use backend::{
    Backend, ChatMessage, ChatRole, Completion, GenParams, LocalBackend, OpenAiBackend,
    OpenAiConfig,
};
pub use citations::{CitationMark, Cleaned, clean as clean_citations, parse as parse_citations};
pub use error::{Error, Result};
pub use evidence::{Evidence, EvidenceConfig};
pub use grounding::{GroundingConfig, SentenceSupport, check as check_grounding};
pub use injection::is_instruction;
pub use prompt::{ABSTAIN_ANSWER, FALLBACK_LABEL, Mode};
pub use retrieve::{Query, Retriever, Source};
pub use wiring::{IndexRetriever, load_local, open_index};
