//! `overseer bench` (placeholder): model speed; `overseer bench embed` dispatches to `bench_embed`.

use crate::settings::Global;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub sub: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Embedding throughput of the index's embedder.
    Embed(super::bench_embed::Args),
}

pub fn run(g: &Global, a: Args) -> anyhow::Result<()> {
    match a.sub {
        Some(Sub::Embed(e)) => super::bench_embed::run(g, e),
        None => anyhow::bail!("'bench' is not implemented yet"),
    }
}
