//! `overseer model ...` (placeholder).

use crate::settings::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show architecture, sizes, quantization, context length and chat template.
    Info {},
}

pub fn run(_g: &Global, _c: Command) -> anyhow::Result<()> {
    anyhow::bail!("'model' is not implemented yet")
}
