//! The digest: a newsletter of what the index holds that is new, grouped by the topics
//! of a taxonomy (by default the research agenda's 18 challenges), each item filed with
//! a confidence, ranked, summarised in the model's own words from its own text and
//! cited, with a few highlights picked across the whole digest; rendered as Markdown,
//! standalone HTML, JSON or an Atom feed.
//!
//! Why it lives here: it is the answer pipeline's sibling. It reads the index's
//! document vectors, writes with the same backends and grounds its sentences with the
//! same checks.

mod build;
mod classify;
pub mod eval;
mod render;
pub mod store;
mod summary;
mod taxonomy;

pub use build::{
    Digest, DigestItem, DigestOptions, DigestProgress, DigestStats, Section, Selection, build,
    grouping,
};
pub use classify::{Classification, Classifier, ClassifyConfig};
pub use render::{Format, render};
pub use store::{DigestInfo, SummaryCache, Watermark};
pub use summary::{Length, Summary, summarize};
pub use taxonomy::{OTHER, Taxonomy, Topic};
