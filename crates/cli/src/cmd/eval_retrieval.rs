//! `overseer eval_retrieval` (placeholder until its issue lands).

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_g: &Global, _a: Args) -> anyhow::Result<()> {
    anyhow::bail!("'eval_retrieval' is not implemented yet")
}
