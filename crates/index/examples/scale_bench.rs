//! Search at scale on a synthetic index (release build):
//!
//! ```text
//! cargo run --release -p overseer-index --example scale_bench -- \
//!     [--chunks N] [--dir DIR] [--corpus DIR] [--queries Q] [--recall-queries R] [--keep]
//! cargo run --release -p overseer-index --example scale_bench -- --search-only DIR
//! ```
//!
//! Build mode writes a synthetic ARD JSONL corpus of `N` chunks (default 1,000,000; 10
//! chunks of 110–160 words per document) to `DIR-src/`, ingests it into the fresh data
//! directory `DIR` (default `/tmp/overseer-scale-N`) through the real [`ingest`] path
//! (tantivy BM25, vector store, and an HNSW graph once the index holds
//! `IngestOptions::hnsw_min_rows` rows), and reports time per ingest stage, peak RSS
//! and disk use by file kind. It then runs itself again with `--search-only DIR`: a
//! fresh process that only opens the index and searches, reporting its peak RSS,
//! p50/p99 latency per mode and HNSW recall@10 against exact search. `DIR` and
//! `DIR-src` are deleted at the end unless `--keep`.
//!
//! Words are drawn from the word frequencies of `--corpus` (default
//! `../shared/data/corpus`; a synthetic Zipf vocabulary if it is missing), three in ten
//! from a per-document topic of 30 words, so documents have topics and queries (2–3
//! topic words plus 1–3 words of one chunk of a document) have relevant documents.
//! Embeddings come from [`WordVectorEmbedder`] (384 dims): MiniLM would take hours
//! for a million chunks on a laptop, and its query cost does not depend on the index
//! size, so latencies are reported without the query embedding (its time is shown
//! separately). Used by `scripts/bench-scale` and docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use overseer_index::testing::WordVectorEmbedder;
use overseer_index::{
    Embedder, Filters, Hnsw, INGEST_STAGES, Index, IngestOptions, Mode, Progress, SearchRequest,
    ingest,
};
use rayon::prelude::*;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const DIM: usize = 384;
const CHUNKS_PER_DOC: usize = 10;
const TOPICS: usize = 2000;
const TOPIC_WORDS: usize = 30;
const SOURCES: [&str; 8] = [
    "arxiv",
    "lesswrong",
    "alignmentforum",
    "blogs",
    "newsletter",
    "youtube",
    "reports",
    "books",
];

/// xorshift-free, seedable, good enough for sampling: splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

/// Words by descending frequency with their cumulative counts (for sampling).
struct Vocab {
    words: Vec<String>,
    cum: Vec<u64>,
}

impl Vocab {
    fn from_corpus(dir: &Path) -> Option<Vocab> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "jsonl") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let t = v["text"].as_str().unwrap_or_default();
                for w in t.split(|c: char| !c.is_ascii_alphabetic()) {
                    if (1..=18).contains(&w.len()) {
                        *counts.entry(w.to_ascii_lowercase()).or_default() += 1;
                    }
                }
            }
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().filter(|(_, c)| *c >= 2).collect();
        if v.len() < 1000 {
            return None;
        }
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Some(Self::build(v))
    }

    /// Zipf (s = 1) over 30,000 made-up words.
    fn zipf() -> Vocab {
        let v = (1..=30_000u64)
            .map(|r| (format!("w{r}"), 1_000_000_000 / r))
            .collect();
        Self::build(v)
    }

    fn build(v: Vec<(String, u64)>) -> Vocab {
        let mut cum = Vec::with_capacity(v.len());
        let mut acc = 0;
        let words = v
            .into_iter()
            .map(|(w, c)| {
                acc += c;
                cum.push(acc);
                w
            })
            .collect();
        Vocab { words, cum }
    }

    fn sample(&self, rng: &mut Rng) -> &str {
        let total = *self.cum.last().expect("vocabulary is not empty");
        let x = rng.next() % total;
        let i = self.cum.partition_point(|&c| c <= x);
        &self.words[i.min(self.words.len() - 1)]
    }
}

fn vm_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn gib(kb: u64) -> String {
    format!("{:.2} GiB", kb as f64 / 1024.0 / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Write the synthetic corpus (JSONL) and the queries (`{"_id","text","doc"}`).
fn generate(vocab: &Vocab, n_chunks: usize, jsonl: &Path, queries: &Path, n_q: usize) -> Res<()> {
    let mut rng = Rng(0x5ca1e);
    let content_lo = 100.min(vocab.words.len() / 2);
    let content_hi = 20_000.min(vocab.words.len());
    let topics: Vec<Vec<&str>> = (0..TOPICS)
        .map(|_| {
            (0..TOPIC_WORDS)
                .map(|_| vocab.words[rng.range(content_lo, content_hi - 1)].as_str())
                .collect()
        })
        .collect();
    let n_docs = n_chunks.div_ceil(CHUNKS_PER_DOC);
    let q_every = (n_docs / n_q.max(1)).max(1);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(jsonl)?);
    let mut qout = BufWriter::new(std::fs::File::create(queries)?);
    let mut written_q = 0;
    for d in 0..n_docs {
        let topic = &topics[rng.below(TOPICS)];
        let chunks = CHUNKS_PER_DOC.min(n_chunks - d * CHUNKS_PER_DOC);
        let word = |rng: &mut Rng| -> String {
            if rng.below(10) < 3 {
                topic[rng.below(TOPIC_WORDS)].to_string()
            } else {
                vocab.sample(rng).to_string()
            }
        };
        let title: Vec<String> = (0..rng.range(5, 9)).map(|_| word(&mut rng)).collect();
        let mut paras = Vec::with_capacity(chunks);
        let mut content_words: Vec<String> = Vec::new();
        for c in 0..chunks {
            let n = rng.range(110, 160);
            let mut p = String::with_capacity(n * 8);
            let mut left_in_sentence = 0;
            for i in 0..n {
                let w = word(&mut rng);
                if c == 0 && w.len() > 3 && content_words.len() < 40 {
                    content_words.push(w.clone());
                }
                if left_in_sentence == 0 {
                    left_in_sentence = rng.range(8, 18);
                    let mut cs = w.chars();
                    if let Some(f) = cs.next() {
                        p.extend(f.to_uppercase());
                        p.push_str(cs.as_str());
                    }
                } else {
                    p.push_str(&w);
                }
                left_in_sentence -= 1;
                if left_in_sentence == 0 || i + 1 == n {
                    p.push('.');
                    left_in_sentence = 0;
                }
                if i + 1 < n {
                    p.push(' ');
                }
            }
            paras.push(p);
        }
        let authors: Vec<String> = (0..rng.range(1, 3))
            .map(|_| format!("Author{} Surname{}", rng.below(5000), rng.below(300)))
            .collect();
        let rec = serde_json::json!({
            "id": format!("syn-{d:07}"),
            "source": SOURCES[rng.below(SOURCES.len())],
            "source_type": "synthetic",
            "title": title.join(" "),
            "authors": authors,
            "text": paras.join("\n\n"),
            "url": format!("https://example.org/syn/{d}"),
            "date_published": format!("{}-{:02}-{:02}T00:00:00Z", rng.range(2010, 2024), rng.range(1, 12), rng.range(1, 28)),
            "tags": [format!("tag{}", rng.below(50))],
        });
        serde_json::to_writer(&mut out, &rec)?;
        out.write_all(b"\n")?;
        if d % q_every == 0 && written_q < n_q && !content_words.is_empty() {
            let mut q: Vec<&str> = (0..rng.range(2, 3))
                .map(|_| topic[rng.below(TOPIC_WORDS)])
                .collect();
            for _ in 0..rng.range(1, 3) {
                q.push(&content_words[rng.below(content_words.len())]);
            }
            let line = serde_json::json!({"_id": format!("q{written_q}"), "text": q.join(" "), "doc": format!("syn-{d:07}")});
            serde_json::to_writer(&mut qout, &line)?;
            qout.write_all(b"\n")?;
            written_q += 1;
        }
    }
    out.flush()?;
    qout.flush()?;
    Ok(())
}

/// Collects [`Progress::stage_seconds`] and times embedder calls.
#[derive(Default)]
struct Stages(Mutex<Vec<(String, f64)>>);
impl Progress for Stages {
    fn stage_seconds(&self, stage: &str, seconds: f64) {
        if let Ok(mut v) = self.0.lock() {
            v.push((stage.to_string(), seconds));
        }
    }
}

/// Disk use (allocated blocks) of the data directory by file kind.
fn disk_by_kind(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, top: &Path, acc: &mut HashMap<String, u64>) {
        let Ok(rd) = std::fs::read_dir(p) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                walk(&path, top, acc);
                continue;
            }
            let rel = path.strip_prefix(top).unwrap_or(&path).to_string_lossy();
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = if rel.contains("tantivy") {
                "tantivy (BM25)"
            } else if name == "vectors.f32" {
                "vectors.f32"
            } else if name.starts_with("hnsw-") {
                "hnsw graph (2 generations)"
            } else if name.starts_with("chunks.") {
                "chunk text + offsets"
            } else if name.starts_with("docs.") {
                "document records"
            } else if name.starts_with("catalog-") {
                "catalog (2 generations)"
            } else {
                "other (bitmaps, info, lock)"
            };
            *acc.entry(kind.to_string()).or_default() += md.blocks() * 512;
        }
    }
    let mut acc = HashMap::new();
    walk(dir, dir, &mut acc);
    let mut v: Vec<(String, u64)> = acc.into_iter().collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v
}

fn build(args: &Args) -> Res<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/overseer-scale-{}", args.chunks)));
    let src = PathBuf::from(format!("{}-src", dir.display()));
    for p in [&dir, &src] {
        if p.exists() {
            std::fs::remove_dir_all(p)?;
        }
    }
    std::fs::create_dir_all(&src)?;
    println!(
        "# scale_bench: {} chunks, data dir {}; {} CPUs, load {}",
        args.chunks,
        dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let t = Instant::now();
    let vocab = Vocab::from_corpus(&args.corpus).unwrap_or_else(|| {
        println!("(no corpus at {}: Zipf vocabulary)", args.corpus.display());
        Vocab::zipf()
    });
    let jsonl = src.join("synthetic.jsonl");
    let queries = src.join("queries.jsonl");
    generate(&vocab, args.chunks, &jsonl, &queries, args.queries)?;
    let gen_s = t.elapsed().as_secs_f64();
    let jsonl_mb = std::fs::metadata(&jsonl)?.len() as f64 / 1e6;
    println!(
        "generate: {gen_s:.1} s ({} vocabulary words, {jsonl_mb:.0} MB JSONL)",
        vocab.words.len()
    );
    drop(vocab);

    let embedder: Arc<dyn Embedder> = Arc::new(WordVectorEmbedder::new(DIM));
    let opts = IngestOptions::default();
    let stages = Stages::default();
    let load0 = loadavg();
    let t = Instant::now();
    let s = ingest(&dir, std::slice::from_ref(&jsonl), embedder, &opts, &stages)?;
    let ingest_s = t.elapsed().as_secs_f64();
    let build_hwm = vm_kb("VmHWM:");
    println!(
        "ingest: {ingest_s:.1} s, {} docs, {} chunks, {} failed, generation {}; load before {load0}, after {}",
        s.docs,
        s.chunks,
        s.failed.len(),
        s.generation,
        loadavg()
    );
    println!("\n| ingest stage | seconds | share |\n|---|---:|---:|");
    let st = stages.0.lock().map(|v| v.clone()).unwrap_or_default();
    let staged: f64 = st.iter().map(|(_, s)| s).sum();
    for (name, secs) in st
        .iter()
        .map(|(n, s)| (n.as_str(), *s))
        .chain([("read + parse JSONL, other", ingest_s - staged)])
    {
        println!("| {name} | {secs:.1} | {:.0}% |", 100.0 * secs / ingest_s);
    }
    println!("| **total ingest** | **{ingest_s:.1}** | |");
    println!(
        "| (corpus generation, not ingest) | {gen_s:.1} | |\n\nbuild process peak RSS (VmHWM): {}",
        gib(build_hwm)
    );
    assert_eq!(INGEST_STAGES.len(), st.len(), "one report per ingest stage");

    println!("\n| disk (data dir) | size |\n|---|---:|");
    let disk = disk_by_kind(&dir);
    let total: u64 = disk.iter().map(|(_, b)| b).sum();
    for (k, b) in &disk {
        println!("| {k} | {:.1} MiB |", *b as f64 / 1048576.0);
    }
    println!(
        "| **total** | **{:.1} MiB** ({:.0} bytes/chunk) |",
        total as f64 / 1048576.0,
        total as f64 / s.chunks.max(1) as f64
    );

    // A fresh process that only opens and searches.
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .arg("--search-only")
        .arg(&dir)
        .arg("--queries-file")
        .arg(&queries)
        .args(["--recall-queries", &args.recall_queries.to_string()])
        .args(["--repeat", &args.repeat.to_string()])
        .status()?;
    if !args.keep {
        std::fs::remove_dir_all(&dir)?;
        std::fs::remove_dir_all(&src)?;
    }
    if !status.success() {
        return Err(format!("search process failed: {status}").into());
    }
    Ok(())
}

fn search_only(args: &Args, dir: &Path) -> Res<()> {
    let queries_file = args
        .queries_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-src/queries.jsonl", dir.display())));
    let embedder = Arc::new(WordVectorEmbedder::new(DIM));
    let t = Instant::now();
    let index = Index::open(dir, embedder.clone())?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let stats = index.stats()?;
    let open_hwm = vm_kb("VmHWM:");
    let texts: Vec<String> = overseer_index::eval::read_queries(&queries_file)?
        .into_iter()
        .map(|q| q.text)
        .collect();
    println!(
        "\n## search process: {} docs, {} chunks, hnsw {}; open {open_ms:.0} ms, RSS after open {}; \
         {} queries, k 10, document level, depth {}, {} measured run(s) after a warm-up run; load {}",
        stats.docs,
        stats.chunks,
        stats.hnsw,
        gib(open_hwm),
        texts.len(),
        overseer_index::DEFAULT_DEPTH,
        args.repeat,
        loadavg()
    );
    println!(
        "\n| mode | p50 ms | p99 ms | mean ms | dense stage p50 ms | query embedding p50 ms |\n|---|---:|---:|---:|---:|---:|"
    );
    let filter = Filters {
        source: vec![SOURCES[1].to_string()],
        ..Filters::default()
    };
    let runs = [
        ("bm25", Mode::Bm25, None),
        ("dense", Mode::Dense, None),
        ("hybrid", Mode::Hybrid, None),
        ("hybrid, source filter (1/8)", Mode::Hybrid, Some(filter)),
    ];
    for (name, mode, filters) in runs {
        let req = |q: &str| {
            let mut r = SearchRequest::new(q, 10);
            r.mode = mode;
            if let Some(f) = &filters {
                r.filters = f.clone();
            }
            r
        };
        for q in &texts {
            index.search(&req(q))?;
        }
        let (mut total, mut dense, mut emb) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.repeat {
            for q in &texts {
                let t = Instant::now();
                let (_, st) = index.search_timed(&req(q))?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                total.push(ms - st.embed_us / 1e3);
                dense.push(st.dense_us / 1e3);
                emb.push(st.embed_us / 1e3);
            }
        }
        let mean = total.iter().sum::<f64>() / total.len().max(1) as f64;
        println!(
            "| {name} | {:.2} | {:.2} | {mean:.2} | {:.2} | {:.3} |",
            pct(&mut total, 0.5),
            pct(&mut total, 0.99),
            pct(&mut dense, 0.5),
            pct(&mut emb, 0.5),
        );
    }
    println!(
        "\n(latency excludes the query embedding: the synthetic embedder's cost is shown, \
         MiniLM's is ~6 ms per query whatever the index size)\n\
         search process peak RSS (VmHWM, includes mapped index pages): {}; load {}",
        gib(vm_kb("VmHWM:")),
        loadavg()
    );
    recall(args, dir, embedder.as_ref(), &texts)
}

/// HNSW recall@10 against exact search, with the graph and vectors the index uses.
fn recall(args: &Args, dir: &Path, embedder: &dyn Embedder, texts: &[String]) -> Res<()> {
    let idx = dir.join("index");
    let graph = std::fs::read_dir(&idx)?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let g: u64 = n
                .strip_prefix("hnsw-")?
                .strip_suffix(".bin")?
                .parse()
                .ok()?;
            Some((g, e.path()))
        })
        .max();
    if args.recall_queries == 0 {
        return Ok(());
    }
    let Some((_, graph)) = graph else {
        println!("no HNSW graph (below hnsw_min_rows): dense search is exact");
        return Ok(());
    };
    let t = Instant::now();
    let h = Hnsw::load(&graph, DIM)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let file = std::fs::File::open(idx.join("vectors.f32"))?;
    // SAFETY: read-only map of a file no one writes while this benchmark runs.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let data: &[f32] = bytemuck::cast_slice(&map[..map.len() / 4 * 4]);
    let rows = data.len() / DIM;
    let qs: Vec<&str> = texts
        .iter()
        .take(args.recall_queries)
        .map(String::as_str)
        .collect();
    let qv = embedder.embed(&qs)?;
    let t = Instant::now();
    let exact: Vec<Vec<u32>> = qv
        .iter()
        .map(|q| {
            let mut s: Vec<(f32, u32)> = data
                .par_chunks(DIM)
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u32))
                .collect();
            s.select_nth_unstable_by(9.min(rows - 1), |a, b| b.0.total_cmp(&a.0));
            s.truncate(10);
            s.into_iter().map(|x| x.1).collect()
        })
        .collect();
    let exact_ms = t.elapsed().as_secs_f64() * 1e3 / qv.len().max(1) as f64;
    let top1: f64 = qv
        .iter()
        .zip(&exact)
        .map(|(q, e)| {
            let v = &data[e[0] as usize * DIM..][..DIM];
            f64::from(v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>())
        })
        .sum::<f64>()
        / qv.len().max(1) as f64;
    println!(
        "\nHNSW recall@10 vs exact ({} queries, {} nodes, graph load {load_ms:.0} ms; exact scan {exact_ms:.0} ms/query; mean top-1 cosine {top1:.3})\n\n| ef | recall@10 | HNSW ms/query p50 |\n|---:|---:|---:|",
        qv.len(),
        h.len()
    );
    // 800 = what Index::search uses at the default depth (400 candidates, ef = 2 x 400).
    for ef in [32, 64, 128, 256, 800] {
        let (mut hit, mut ms) = (0usize, Vec::new());
        for (q, e) in qv.iter().zip(&exact) {
            let t = Instant::now();
            let got = h.search(data, q, 10, ef, &|_| true);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            hit += got.iter().filter(|s| e.contains(&s.row)).count();
        }
        println!(
            "| {ef}{} | {:.3} | {:.2} |",
            if ef == 800 { " (search default)" } else { "" },
            hit as f64 / (10 * qv.len().max(1)) as f64,
            pct(&mut ms, 0.5)
        );
    }
    Ok(())
}

struct Args {
    chunks: usize,
    dir: Option<PathBuf>,
    corpus: PathBuf,
    queries: usize,
    recall_queries: usize,
    repeat: usize,
    keep: bool,
    search_only: Option<PathBuf>,
    queries_file: Option<PathBuf>,
}

fn main() -> Res<()> {
    // The runtime switches the `overseer` binary reads (docs/CONFIGURATION.md).
    if std::env::var_os("OVERSEER_KERNELS_AVX2").is_some() {
        overseer_kernels::Level::set_cap(overseer_kernels::Level::Avx2);
    }
    if std::env::var_os("OVERSEER_AMX").is_some_and(|v| v == "0") {
        overseer_kernels::Bf16Matrix::set_enabled(false);
    }
    let usage = "usage: scale_bench [--chunks N] [--dir DIR] [--corpus DIR] [--queries Q] \
                 [--recall-queries R] [--repeat R] [--keep] | --search-only DIR [--queries-file F]";
    let mut a = Args {
        chunks: 1_000_000,
        dir: None,
        corpus: PathBuf::from("../shared/data/corpus"),
        queries: 300,
        recall_queries: 100,
        repeat: 1,
        keep: false,
        search_only: None,
        queries_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--keep" {
            a.keep = true;
            continue;
        }
        let val = it.next().ok_or(usage)?;
        match flag.as_str() {
            "--chunks" => a.chunks = val.replace('_', "").parse()?,
            "--dir" => a.dir = Some(PathBuf::from(val)),
            "--corpus" => a.corpus = PathBuf::from(val),
            "--queries" => a.queries = val.parse()?,
            "--recall-queries" => a.recall_queries = val.parse()?,
            "--repeat" => a.repeat = val.parse()?,
            "--search-only" => a.search_only = Some(PathBuf::from(val)),
            "--queries-file" => a.queries_file = Some(PathBuf::from(val)),
            _ => return Err(usage.into()),
        }
    }
    if a.chunks == 0 {
        return Err("--chunks must be at least 1".into());
    }
    match a.search_only.clone() {
        Some(dir) => search_only(&a, &dir),
        None => build(&a),
    }
}
