//! `overseer-lab`: find, test and remove a chat model's refusal direction.
//!
//! Reproduces Arditi et al. (2024), "Refusal in language models is mediated by a
//! single direction", on the runtime's residual-stream hooks: difference-in-means
//! candidates at every (layer, post-instruction position), selection by bypass /
//! induce / KL scores, directional ablation and activation addition, weight
//! orthogonalization into a new GGUF, llama.cpp control vectors, and a report.

mod data;
mod direction;
mod error;
mod gguf_edit;
mod lanes;
mod metric;
mod pipeline;
mod plot;
mod report;
mod runner;
mod select;
mod state;

pub use data::{Split, load_prompts, parse_prompts, sample, split_path};
pub use direction::{Candidates, DIRECTION_FILE, Direction, direction_path, load_direction};
pub use error::{Error, Result};
pub use gguf_edit::{
    ControlVectorOptions, EditedDType, OrthoSummary, dequantized_copy, export_control_vector,
    orthogonalize,
};
pub use metric::{
    DEFAULT_REFUSAL_WORDS, REFUSAL_SUBSTRINGS, cosine, is_refusal, kl_divergence, log_softmax,
    mean, refusal_score, refusal_token_ids, token_cross_entropy,
};
pub use pipeline::{
    Intervention, JudgedCompletion, RefusalRun, RunConfig, ablation_hook, default_data_dir,
    evaluate, steering_hook, summarize,
};
pub use report::{CostReport, DataReport, Example, Rates, Report, SelectedReport};
pub use runner::{
    Completion, LayerInputs, NoProgress, Progress, Runner, boxed as boxed_hook,
    reborrow as reborrow_hook,
};
pub use select::{
    CandidateScore, Rejection, Selected, SelectionConfig, first_pruned_layer, pick_coefficient,
    select,
};
pub use state::{RunState, write_atomic};
