//! `overseer eval retrieval|answers`: dispatch to the two evaluation modules.

use crate::settings::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Retrieval quality (BEIR queries + qrels): nDCG@10, MRR@10, Recall@1/10/100 per mode.
    Retrieval(super::eval_retrieval::Args),
    /// Answer quality: copy ratio, key points, citations, junk, abstention, timings.
    Answers(Box<super::eval_answers::Args>),
}

pub fn run(g: &Global, c: Command) -> anyhow::Result<()> {
    match c {
        Command::Retrieval(a) => super::eval_retrieval::run(g, a),
        Command::Answers(a) => super::eval_answers::run(g, *a),
    }
}
