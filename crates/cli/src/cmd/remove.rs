//! `overseer remove`: take documents out of the literature index by id, in one atomic
//! commit (the same lock and commit as `overseer ingest`; no embedding model needed).
//! Like `rm`, it removes what it can and fails when an id was not there.

use anyhow::{Result, bail};

use crate::settings::Global;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Document ids as ingested (the ARD `id` for JSONL input; see `search --json`).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Print the summary as JSON on stdout:
    /// {"removed": [{"id","chunks"}], "not_found": [...], "docs", "chunks", "generation"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, a: Args) -> Result<()> {
    let data_dir = g.data_dir()?;
    let s = overseer_index::remove_documents(&data_dir, &a.ids)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        for d in &s.removed {
            eprintln!("removed {} ({} chunks)", d.id, d.chunks);
        }
        eprintln!(
            "{} removed, {} not found; index now {} documents, {} chunks",
            s.removed.len(),
            s.not_found.len(),
            s.docs,
            s.chunks
        );
    }
    if !s.not_found.is_empty() {
        bail!(
            "no document with id {} in {}",
            s.not_found
                .iter()
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            data_dir.display()
        );
    }
    Ok(())
}
