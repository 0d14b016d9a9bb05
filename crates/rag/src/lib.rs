//! `overseer-rag`: grounded, cited answers from the literature index.
//!
//! [`Assistant::ask`] runs the pipeline (rewrite follow-ups, retrieve, gate on
//! relevance, assemble numbered sources within the token budget, stream the answer,
//! clean and check its citations, suggest follow-ups) over a [`Retriever`] (the
//! literature index) and a [`Backend`] (the embedded model or an OpenAI-compatible
//! server).

mod assistant;
mod backend;
mod citations;
mod context;
mod error;
mod grounding;
mod prompt;
mod retrieve;
mod text;
mod wiring;

pub use assistant::{
    Answer, AskEvent, AskRequest, Assistant, AssistantConfig, Citation, MAX_QUESTION_CHARS, Timings,
};
pub use backend::{
    Backend, ChatMessage, ChatRole, Completion, GenParams, LocalBackend, OpenAiBackend,
    OpenAiConfig,
};
pub use citations::{CitationMark, Cleaned, clean as clean_citations, parse as parse_citations};
pub use error::{Error, Result};
pub use grounding::{GroundingConfig, SentenceSupport, check as check_grounding};
pub use prompt::{ABSTAIN_ANSWER, Mode};
pub use retrieve::{Query, Retriever, Source};
pub use wiring::{IndexRetriever, load_local, open_index};
