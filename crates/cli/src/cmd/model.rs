//! `overseer model info`: what a GGUF file holds, read from its header without loading
//! the weights.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use overseer_lm::GgufInfo;

use crate::settings::Global;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show architecture, sizes, quantization, context length and chat template.
    Info {
        /// GGUF model file.
        path: PathBuf,
        /// Print JSON (the full summary, tensors and metadata included).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_g: &Global, c: Command) -> Result<()> {
    match c {
        Command::Info { path, json } => {
            if !path.exists() {
                bail!("model file {} does not exist", path.display());
            }
            let info = GgufInfo::read(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", render(&info));
            }
            Ok(())
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_count(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2}B", n as f64 / 1e9)
    } else if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        n.to_string()
    }
}

/// The text report (stable layout: an `insta` snapshot checks it).
pub fn render(info: &GgufInfo) -> String {
    let mut s = String::new();
    let w = &mut s;
    let file = info.path.file_name().map_or_else(
        || info.path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let _ = writeln!(w, "file            {file}");
    let _ = writeln!(w, "name            {}", info.name.as_deref().unwrap_or("-"));
    let supported = match (&info.config, &info.config_error) {
        (Some(_), _) => String::new(),
        (None, Some(e)) => format!(" (invalid: {e})"),
        (None, None) => " (unsupported)".to_string(),
    };
    let _ = writeln!(w, "architecture    {}{supported}", info.architecture);
    let _ = writeln!(
        w,
        "size            {} ({} bytes)",
        human_bytes(info.file_size),
        info.file_size
    );
    let _ = writeln!(
        w,
        "parameters      {} ({})",
        human_count(info.parameter_count),
        info.parameter_count
    );
    let _ = writeln!(
        w,
        "quantization    {} (file type {})",
        info.quantization,
        info.file_type.as_deref().unwrap_or("unknown")
    );
    if let Some(c) = &info.config {
        let _ = writeln!(w, "context length  {}", c.context_length);
        let _ = writeln!(w, "layers          {}", c.n_layer);
        let _ = writeln!(w, "hidden size     {}", c.hidden);
        let _ = writeln!(w, "ffn size        {}", c.ffn);
        let _ = writeln!(
            w,
            "heads           {} (kv heads {}, head size {})",
            c.n_head, c.n_kv_head, c.head_dim
        );
        let _ = writeln!(w, "vocabulary      {}", c.vocab);
        let _ = writeln!(w, "rope theta      {}", c.rope_theta);
        let _ = writeln!(w, "rms eps         {:e}", c.rms_eps as f32);
        let _ = writeln!(
            w,
            "tied embeddings {}",
            if c.tied_embeddings { "yes" } else { "no" }
        );
    }
    let _ = writeln!(
        w,
        "chat template   {}",
        match &info.chat_template {
            Some(t) => format!("yes ({} chars)", t.len()),
            None => "no (ChatML fallback)".to_string(),
        }
    );
    let _ = writeln!(w, "tensors         {}", info.tensors.len());
    for (ty, c) in &info.tensor_types {
        let _ = writeln!(
            w,
            "  {ty:<6} {:>4} tensors {:>12} params {:>10}",
            c.tensors,
            human_count(c.params),
            human_bytes(c.bytes)
        );
    }
    s
}
