//! The digest over a very large window, in bounded memory (release build):
//!
//! ```text
//! cargo run --release -p overseer-rag --example digest_scale -- [DOCS] [DIR]
//! ```
//!
//! Writes a synthetic ARD JSONL corpus of `DOCS` documents (default 100,000; 40–80
//! words each, words drawn from the agenda's topic descriptions and a filler
//! vocabulary), ingests it into `DIR` (default `/tmp/overseer-digest-scale`) with the
//! model-free [`WordVectorEmbedder`], then runs itself again on that index: a fresh
//! process that makes the digest of every document (`--all`, no summaries) and reports
//! the time per stage and its peak RSS (VmHWM), against the index's size on disk. The
//! digest streams the index and keeps one small record per item (no texts, no vectors
//! beyond the few hundred items per topic whose novelty it measures).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use overseer_index::testing::WordVectorEmbedder;
use overseer_index::{Embedder, Index, IngestOptions, NoProgress};
use overseer_rag::digest::{self, DigestOptions, Selection, Taxonomy};

fn vm_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn du(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e
                .metadata()
                .map(|m| (m.is_dir(), m.len()))
                .unwrap_or((false, 0));
            n += if m.0 { du(&e.path()) } else { m.1 };
        }
    }
    n
}

fn embedder() -> Arc<dyn Embedder> {
    Arc::new(WordVectorEmbedder::new(384))
}

fn build(docs: usize, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let tax = Taxonomy::agenda();
    let topic_words: Vec<Vec<String>> = tax
        .topics
        .iter()
        .map(|t| {
            t.description
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.len() > 3)
                .map(str::to_lowercase)
                .collect()
        })
        .collect();
    let filler: Vec<String> = (0..2000).map(|i| format!("w{i:04}")).collect();
    let src = dir.with_extension("jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..docs {
        let t = (next() % topic_words.len() as u64) as usize;
        let n = 40 + (next() % 41) as usize;
        let words: Vec<&str> = (0..n)
            .map(|_| {
                if next() % 10 < 4 {
                    let tw = &topic_words[t];
                    tw[(next() % tw.len() as u64) as usize].as_str()
                } else {
                    filler[(next() % filler.len() as u64) as usize].as_str()
                }
            })
            .collect();
        let day = 1 + (i % 28);
        let rec = serde_json::json!({
            "id": format!("doc{i:07}"), "source": "synthetic", "title": format!("Document {i}"),
            "authors": ["Synthetic"], "text": format!("{}.", words.join(" ")),
            "date_published": format!("2024-02-{day:02}T00:00:00Z"), "tags": []
        });
        writeln!(f, "{rec}")?;
    }
    f.flush()?;
    drop(f);
    let t = Instant::now();
    let s = overseer_index::ingest(
        dir,
        std::slice::from_ref(&src),
        embedder(),
        &IngestOptions::default(),
        &NoProgress,
    )?;
    println!(
        "ingested {} documents ({} chunks) in {:.1} s; index on disk {:.0} MiB",
        s.docs,
        s.chunks,
        t.elapsed().as_secs_f64(),
        du(dir) as f64 / 1048576.0
    );
    std::fs::remove_file(&src)?;
    Ok(())
}

fn digest_only(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let before = vm_kb("VmHWM:");
    let index = Index::open(dir, embedder())?;
    let t = Instant::now();
    let d = digest::build(
        &index,
        &Taxonomy::agenda(),
        &Selection::default(),
        &DigestOptions {
            summaries: false,
            ..DigestOptions::default()
        },
        None,
        None,
        &mut |_| {},
    )?;
    let json = digest::render(&d, digest::Format::Json);
    println!(
        "digest of {} items in {:.1} s (select and classify {} ms, novelty and ranking {} ms), {} sections, JSON {:.0} MiB",
        d.items.len(),
        t.elapsed().as_secs_f64(),
        d.stats.select_ms,
        d.stats.rank_ms,
        d.sections.len(),
        json.len() as f64 / 1048576.0
    );
    println!(
        "digest process peak RSS (VmHWM): {:.0} MiB (after opening: {:.0} MiB); index on disk {:.0} MiB",
        vm_kb("VmHWM:") as f64 / 1024.0,
        before as f64 / 1024.0,
        du(dir) as f64 / 1048576.0
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--digest-only") {
        return digest_only(Path::new(args.get(1).ok_or("--digest-only DIR")?));
    }
    let docs: usize = args.first().map_or(Ok(100_000), |s| s.parse())?;
    let dir = PathBuf::from(
        args.get(1)
            .map_or("/tmp/overseer-digest-scale", String::as_str),
    );
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    build(docs, &dir)?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--digest-only")
        .arg(&dir)
        .status()?;
    std::fs::remove_dir_all(&dir)?;
    if !status.success() {
        return Err("the digest process failed".into());
    }
    Ok(())
}
