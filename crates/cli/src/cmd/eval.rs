//! `overseer eval retrieval|answers|digest`: dispatch to the three evaluation modules.

use crate::settings::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Retrieval quality (BEIR queries + qrels): nDCG@10, MRR@10, Recall@1/10/100 per mode.
    Retrieval(super::eval_retrieval::Args),
    /// Answer quality: copy ratio, key points, citations, junk, abstention, timings.
    Answers(Box<super::eval_answers::Args>),
    /// Digest classification: top-1 accuracy and macro-F1 against the newsletter's own
    /// categories, beside BM25 and majority-class baselines.
    Digest(super::eval_digest::Args),
}

pub fn run(g: &Global, c: Command) -> anyhow::Result<()> {
    match c {
        Command::Retrieval(a) => super::eval_retrieval::run(g, a),
        Command::Answers(a) => super::eval_answers::run(g, *a),
        Command::Digest(a) => super::eval_digest::run(g, a),
    }
}
