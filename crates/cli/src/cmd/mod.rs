//! One module per command. Each module owns its clap `Args` and its `run`.

pub mod ask;
pub mod bench;
pub mod bench_embed;
pub mod chat;
pub mod digest;
pub mod eval;
pub mod eval_answers;
pub mod eval_digest;
pub mod eval_retrieval;
pub mod generate;
pub mod ingest;
pub mod model;
pub mod refusal;
pub mod remove;
pub mod search;
pub mod serve;
