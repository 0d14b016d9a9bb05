//! `overseer refusal ...` (placeholder).

use crate::settings::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Run the whole refusal-direction pipeline.
    Run {},
}

pub fn run(_g: &Global, _c: Command) -> anyhow::Result<()> {
    anyhow::bail!("'refusal' is not implemented yet")
}
