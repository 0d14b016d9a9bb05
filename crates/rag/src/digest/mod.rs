//! The digest: a newsletter of what the index holds that is new, grouped by the topics
//! of a taxonomy (by default the research agenda's 18 challenges), each item filed with
//! a confidence, ranked, summarised in the model's own words from its own text and
//! cited, with a few highlights picked across the whole digest.
//!
//! Why it lives here: it is the answer pipeline's sibling — it reads the index's
//! document vectors, writes with the same backends and grounds its sentences with the
//! same checks.

mod classify;
pub mod eval;
mod taxonomy;

pub use classify::{Classification, Classifier, ClassifyConfig};
pub use taxonomy::{OTHER, Taxonomy, Topic};
