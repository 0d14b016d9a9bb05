//! `ingest`: read sources, skip unchanged documents, chunk and embed the rest, and
//! commit a new generation atomically (see `store` for the protocol). One ingest at
//! a time per data directory (an OS file lock); searches keep reading the previous
//! generation until the commit lands.
//!
//! [`remove_documents`] goes through the same writer and the same commit: it drops
//! documents from the catalog, deletes their chunks from tantivy and clears their rows
//! in the next generation's alive bitmap (vectors and HNSW nodes stay on disk as
//! tombstones that every search path skips), exactly as `--prune` does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tantivy::{IndexWriter, Term};

use crate::bm25::{self, Fields};
use crate::chunk::{Chunk, ChunkOptions, chunk_text};
use crate::hnsw::{Hnsw, HnswParams};
use crate::source::{self, Failure, Item, SourceDoc};
use crate::store::{
    self, Appender, Catalog, CatalogEntry, ChunkRec, DocRec, IndexInfo, Manifest, StoredDoc,
};
use crate::{Embedder, Error, Result};

/// Progress reporting for long ingests (the CLI draws a bar).
pub trait Progress: Sync {
    /// Total work units (JSONL lines + other files) about to be processed.
    fn begin(&self, _total: u64) {}
    fn advance(&self, _n: u64) {}
    /// A phase change, e.g. "committing".
    fn message(&self, _msg: &str) {}
    fn finish(&self) {}
    /// Wall-clock seconds the ingest spent in one stage, summed over the run; called
    /// once per stage after the last commit, in [`INGEST_STAGES`] order (benchmarks:
    /// `examples/scale_bench.rs`). Reading and parsing the sources is the rest.
    fn stage_seconds(&self, _stage: &str, _seconds: f64) {}
}

/// Stages reported through [`Progress::stage_seconds`]: `chunk` (splitting documents),
/// `embed` (embedder calls), `write` (appending vectors, chunk text and tantivy
/// documents), `commit` (fsyncs, bitmap, catalog and the tantivy commit),
/// `hnsw_build` (extending the graph) and `hnsw_save` (writing it).
pub const INGEST_STAGES: [&str; 6] = [
    "chunk",
    "embed",
    "write",
    "commit",
    "hnsw_build",
    "hnsw_save",
];

/// Seconds per stage of [`INGEST_STAGES`], same order.
#[derive(Debug, Clone, Copy, Default)]
struct StageClock([f64; 6]);

impl StageClock {
    /// Add the time since `*t` to stage `i` and restart `*t`.
    fn lap(&mut self, i: usize, t: &mut Instant) {
        let now = Instant::now();
        self.0[i] += (now - *t).as_secs_f64();
        *t = now;
    }
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Remove documents that vanished from a source given in this run.
    pub prune: bool,
    /// Delete the existing index first (needed after a version or embedder change).
    pub reset: bool,
    pub chunk: ChunkOptions,
    /// Chunks per embedder call.
    pub embed_batch: usize,
    /// Commit a generation after this many new documents (bounds lost work on a crash).
    pub checkpoint_docs: usize,
    /// Build/extend an HNSW graph once this many rows exist (exact search below).
    pub hnsw_min_rows: usize,
    pub hnsw: HnswParams,
    /// Largest single document accepted, in bytes: one JSONL line, one markdown, HTML
    /// or text file, the text extracted from one PDF. Larger ones are listed as
    /// failures (indexing one costs about 60 times its size in memory).
    pub max_record_bytes: usize,
}

/// Default of [`IngestOptions::max_record_bytes`]: 8 MiB, several times the longest
/// paper in the Alignment Research Dataset.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8 << 20;

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            prune: false,
            reset: false,
            chunk: ChunkOptions::default(),
            embed_batch: 256,
            checkpoint_docs: 2_000,
            hnsw_min_rows: 100_000,
            hnsw: HnswParams::default(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestSummary {
    pub added: u64,
    pub updated: u64,
    pub skipped: u64,
    pub removed: u64,
    pub failed: Vec<Failure>,
    pub chunks_added: u64,
    /// Live documents and chunks after the ingest.
    pub docs: u64,
    pub chunks: u64,
    pub generation: u64,
    pub seconds: f64,
    /// Notes such as "prune skipped for X".
    pub notes: Vec<String>,
}

/// Chunking settings are part of a document's hash, so changing them re-chunks.
fn doc_hash(d: &SourceDoc, opts: &ChunkOptions, embedder: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&d.meta).unwrap_or_default());
    h.update([0]);
    h.update(d.text.as_bytes());
    h.update(
        format!(
            "\0chunk-v1/{}/{}/{embedder}",
            opts.max_tokens, opts.overlap_tokens
        )
        .as_bytes(),
    );
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text embedded for a chunk: title and heading path give it context.
pub(crate) fn embed_input(title: &str, heading_path: &[String], text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 128);
    let title: String = title.chars().take(200).collect();
    if !title.trim().is_empty() {
        s.push_str(title.trim());
        s.push('\n');
    }
    if !heading_path.is_empty() {
        let p: String = heading_path.join(" > ").chars().take(200).collect();
        s.push_str(&p);
        s.push('\n');
    }
    s.push_str(text);
    s
}

struct Pending {
    doc: SourceDoc,
    hash: String,
}

struct Writer<'a> {
    dir: PathBuf,
    /// `None` for a writer that only removes (it never embeds nor hashes documents).
    embedder: Option<&'a dyn Embedder>,
    /// Vector dimension of the index (from `index.json`).
    dim: usize,
    opts: &'a IngestOptions,
    fields: Fields,
    writer: IndexWriter,
    manifest: Manifest,
    catalog: Catalog,
    alive: Vec<u64>,
    vectors: Appender,
    chunks_idx: Appender,
    chunks_txt: Appender,
    docs_idx: Appender,
    docs_jsonl: Appender,
    hnsw: Option<Hnsw>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    since_checkpoint: usize,
    dirty: bool,
    seen: HashMap<String, String>,
    summary: IngestSummary,
    clock: StageClock,
}

/// Ingest `paths` into the index in `data_dir`.
///
/// Errors: `Locked` (another ingest runs), `EmbedderMismatch`/`IncompatibleVersion`
/// (use `reset`), embedder and I/O failures. Bad input records never fail the run:
/// they are listed in [`IngestSummary::failed`].
pub fn ingest(
    data_dir: &Path,
    paths: &[PathBuf],
    embedder: std::sync::Arc<dyn Embedder>,
    opts: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestSummary> {
    let t0 = Instant::now();
    let dir = store::index_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let lock = lock_index(data_dir, &dir)?;
    if opts.reset {
        wipe(&dir)?;
    }
    let mut w = Writer::open(&dir, Some(embedder.as_ref()), opts)?;

    let mut expand_failures = Vec::new();
    let roots = source::expand(paths, &mut expand_failures);
    w.summary.failed.extend(expand_failures);
    let total: u64 = roots
        .iter()
        .flat_map(|r| r.files.iter())
        .map(|(p, k)| source::work_units(p, *k))
        .sum();
    progress.begin(total);
    let mut unknown_failures: HashMap<String, usize> = HashMap::new();
    for root in &roots {
        for (path, kind) in &root.files {
            let mut err = None;
            source::read_file(
                root,
                path,
                *kind,
                opts.max_record_bytes,
                &mut |item| {
                    if err.is_some() {
                        return;
                    }
                    if let Item::Failed(f) = &item
                        && f.id.is_none()
                    {
                        *unknown_failures.entry(root.origin.clone()).or_default() += 1;
                    }
                    if let Err(e) = w.handle(item, &root.origin) {
                        err = Some(e);
                    }
                },
                &mut |n| progress.advance(n),
            );
            if let Some(e) = err {
                return Err(e);
            }
        }
    }
    w.flush()?;
    if opts.prune {
        for root in &roots {
            if let Some(n) = unknown_failures.get(&root.origin) {
                w.summary.notes.push(format!(
                    "prune skipped for {}: {n} record(s) failed before their id was known",
                    root.origin
                ));
                continue;
            }
            w.prune(&root.origin);
        }
    }
    progress.message("committing");
    if w.dirty {
        w.commit()?;
    }
    progress.finish();
    for (stage, secs) in INGEST_STAGES.iter().zip(w.clock.0) {
        progress.stage_seconds(stage, secs);
    }
    let mut s = std::mem::take(&mut w.summary);
    s.docs = w.catalog.len() as u64;
    s.chunks = w.alive.iter().map(|x| u64::from(x.count_ones())).sum();
    s.generation = w.manifest.generation;
    s.seconds = t0.elapsed().as_secs_f64();
    drop(lock);
    Ok(s)
}

/// Take the writer lock of the index folder `dir` (inside `data_dir`), without waiting.
///
/// Errors: `Locked` when another ingest or removal holds it, I/O.
fn lock_index(data_dir: &Path, dir: &Path) -> Result<std::fs::File> {
    let lock_path = dir.join(store::LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io("open", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked {
            dir: data_dir.to_path_buf(),
            lock: lock_path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &lock_path, e)),
    }
}

/// One removed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedDoc {
    pub id: String,
    /// Chunks it had (now gone from BM25 and dense results).
    pub chunks: u32,
}

/// What [`remove_documents`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveSummary {
    /// Documents removed, in the order asked.
    pub removed: Vec<RemovedDoc>,
    /// Ids asked for that no live document has (nothing was done for them).
    pub not_found: Vec<String>,
    /// Live documents and chunks afterwards.
    pub docs: u64,
    pub chunks: u64,
    /// The committed generation afterwards (unchanged when nothing was removed).
    pub generation: u64,
}

/// Remove the documents `ids` from the index in `data_dir`, in one atomic commit
/// (the same writer, lock and commit protocol as [`ingest`]; the same path as
/// `--prune`). Searches that hold the previous generation keep working and still see
/// the documents until they refresh; a crash before the commit point leaves the
/// previous generation intact. Unknown ids (and any id when there is no index yet)
/// are listed in [`RemoveSummary::not_found`]; when no id is known nothing is written.
/// Repeated ids count once. Re-ingesting a removed document adds it back.
///
/// Needs no embedding model. Errors: `Locked` (an ingest or removal is running),
/// `IncompatibleVersion`, `Corrupt`, I/O.
pub fn remove_documents<S: AsRef<str>>(data_dir: &Path, ids: &[S]) -> Result<RemoveSummary> {
    let dir = store::index_dir(data_dir);
    let mut out = RemoveSummary::default();
    let mut asked: Vec<&str> = Vec::with_capacity(ids.len());
    for id in ids {
        if !asked.contains(&id.as_ref()) {
            asked.push(id.as_ref());
        }
    }
    // No index at all: nothing to remove, and nothing to create.
    if !dir.is_dir() || store::read_info(&dir)?.is_none() {
        out.not_found = asked.iter().map(|s| s.to_string()).collect();
        return Ok(out);
    }
    let lock = lock_index(data_dir, &dir)?;
    let opts = IngestOptions::default();
    let mut w = Writer::open(&dir, None, &opts)?;
    for id in asked {
        match w.remove_doc(id) {
            Some(e) => out.removed.push(RemovedDoc {
                id: id.to_string(),
                chunks: e.n_chunks,
            }),
            None => out.not_found.push(id.to_string()),
        }
    }
    if w.dirty {
        w.commit()?;
    }
    out.docs = w.catalog.len() as u64;
    out.chunks = w.alive.iter().map(|x| u64::from(x.count_ones())).sum();
    out.generation = w.manifest.generation;
    drop(lock);
    Ok(out)
}

/// Remove `/index` contents except the lock file.
fn wipe(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == store::LOCK) {
            continue;
        }
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| Error::io("remove", &p, e))?;
    }
    Ok(())
}

/// Remove generation files other than `keep` and `keep - 1`.
fn collect_garbage(dir: &Path, keep: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let g = ["alive-", "catalog-", "hnsw-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .and_then(|rest| rest.split('.').next())
            .and_then(|g| g.parse::<u64>().ok());
        if let Some(g) = g
            && g != keep
            && g + 1 != keep
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl<'a> Writer<'a> {
    /// Open the writer of the index in `dir`, creating the index when there is none.
    /// Without an `embedder` the writer can only remove documents, and the index must
    /// exist already.
    fn open(
        dir: &Path,
        embedder: Option<&'a dyn Embedder>,
        opts: &'a IngestOptions,
    ) -> Result<Self> {
        let tdir = dir.join(store::TANTIVY);
        let info = match (store::read_info(dir)?, embedder) {
            (Some(info), Some(embedder)) => {
                if info.embedder != embedder.name() || info.dim != embedder.dim() {
                    return Err(Error::EmbedderMismatch {
                        dir: dir.to_path_buf(),
                        index: format!("{} ({} dims)", info.embedder, info.dim),
                        current: format!("{} ({} dims)", embedder.name(), embedder.dim()),
                    });
                }
                info
            }
            (Some(info), None) => info,
            (None, None) => {
                return Err(Error::InvalidArgument(format!(
                    "there is no index in {} yet",
                    dir.display()
                )));
            }
            (None, Some(embedder)) => {
                // Fresh index (or a creation that was interrupted): start clean.
                wipe(dir)?;
                std::fs::create_dir_all(&tdir).map_err(|e| Error::io("create", &tdir, e))?;
                let (schema, _) = bm25::schema();
                tantivy::Index::create_in_dir(&tdir, schema)?;
                let info = IndexInfo {
                    format: store::FORMAT_VERSION,
                    embedder: embedder.name().to_string(),
                    dim: embedder.dim(),
                };
                let json = serde_json::to_vec_pretty(&info).expect("plain struct serialises");
                store::write_atomic(&dir.join(store::INFO), &json)?;
                info
            }
        };
        let index = tantivy::Index::open_in_dir(&tdir)?;
        let fields = Fields::from_schema(&index.schema())?;
        let metas = index.load_metas()?;
        let manifest = match metas.payload {
            Some(p) => serde_json::from_str::<Manifest>(&p).map_err(|e| Error::Corrupt {
                path: tdir.join("meta.json"),
                reason: format!("commit payload: {e}"),
            })?,
            None => Manifest {
                format: store::FORMAT_VERSION,
                ..Manifest::default()
            },
        };
        if manifest.format != store::FORMAT_VERSION {
            return Err(Error::IncompatibleVersion {
                dir: dir.to_path_buf(),
                found: format!("format {}", manifest.format),
                expected: format!("format {}", store::FORMAT_VERSION),
            });
        }
        let (catalog, alive) = if manifest.generation == 0 {
            (Catalog::new(), Vec::new())
        } else {
            let cp = dir.join(store::catalog_name(manifest.generation));
            let bytes = std::fs::read(&cp).map_err(|e| Error::io("read", &cp, e))?;
            let catalog = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: cp,
                reason: e.to_string(),
            })?;
            (
                catalog,
                store::read_bits(&dir.join(store::alive_name(manifest.generation)))?,
            )
        };
        let m = &manifest;
        let app = |name: &str, len: u64| Appender::open(dir.join(name), len);
        let vectors = app(store::VECTORS, m.rows * info.dim as u64 * 4)?;
        let chunks_idx = app(
            store::CHUNKS_IDX,
            m.rows * std::mem::size_of::<ChunkRec>() as u64,
        )?;
        let chunks_txt = app(store::CHUNKS_TXT, m.chunks_txt_bytes)?;
        let docs_idx = app(
            store::DOCS_IDX,
            m.doc_records * std::mem::size_of::<DocRec>() as u64,
        )?;
        let docs_jsonl = app(store::DOCS_JSONL, m.docs_jsonl_bytes)?;
        // Tantivy discards anything a killed writer left uncommitted.
        let writer = index.writer_with_num_threads(1, 64_000_000)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            embedder,
            dim: info.dim,
            opts,
            fields,
            writer,
            manifest,
            catalog,
            alive,
            vectors,
            chunks_idx,
            chunks_txt,
            docs_idx,
            docs_jsonl,
            hnsw: None,
            pending: Vec::new(),
            pending_bytes: 0,
            since_checkpoint: 0,
            dirty: false,
            seen: HashMap::new(),
            summary: IngestSummary::default(),
            clock: StageClock::default(),
        })
    }

    /// The embedder of an ingesting writer.
    fn embedder(&self) -> Result<&'a dyn Embedder> {
        self.embedder.ok_or_else(|| {
            Error::InvalidArgument("this index writer was opened without an embedder".into())
        })
    }

    fn handle(&mut self, item: Item, origin: &str) -> Result<()> {
        let doc = match item {
            Item::Failed(f) => {
                if let Some(id) = &f.id {
                    // Known id: keep the old version and protect it from --prune.
                    self.seen
                        .entry(id.clone())
                        .or_insert_with(|| f.location.clone());
                }
                self.summary.failed.push(f);
                return Ok(());
            }
            Item::Doc(d) => *d,
        };
        if let Some(first) = self.seen.get(&doc.meta.id) {
            self.summary.failed.push(Failure {
                location: doc.location.clone(),
                id: Some(doc.meta.id.clone()),
                reason: format!("duplicate id (first seen at {first}); skipped"),
            });
            return Ok(());
        }
        self.seen.insert(doc.meta.id.clone(), doc.location.clone());
        let hash = doc_hash(&doc, &self.opts.chunk, self.embedder()?.name());
        if let Some(e) = self.catalog.get_mut(&doc.meta.id)
            && e.hash == hash
        {
            self.summary.skipped += 1;
            if e.origin != origin {
                e.origin = origin.to_string();
                self.dirty = true;
            }
            return Ok(());
        }
        self.pending_bytes += doc.text.len();
        self.pending.push(Pending { doc, hash });
        // Roughly embed_batch chunks of ~1000 characters per flush.
        if self.pending_bytes >= self.opts.embed_batch.max(1) * 1000 || self.pending.len() >= 512 {
            self.flush()?;
        }
        Ok(())
    }

    /// Drop document `id` from the next generation: out of the catalog, its chunks
    /// deleted from tantivy and cleared in the alive bitmap (their vector rows and HNSW
    /// nodes stay as tombstones that searches skip). `None` when no live document has
    /// this id. Shared by updates, `--prune` and [`remove_documents`].
    fn remove_doc(&mut self, id: &str) -> Option<CatalogEntry> {
        let e = self.catalog.remove(id)?;
        self.writer
            .delete_term(Term::from_field_text(self.fields.doc_id, id));
        for r in e.first_row..e.first_row + u64::from(e.n_chunks) {
            store::bit_set(&mut self.alive, r as usize, false);
        }
        self.dirty = true;
        Some(e)
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let embedder = self.embedder()?;
        let mut t = Instant::now();
        let copts = self.opts.chunk;
        let chunked: Vec<Result<Vec<Chunk>>> = batch
            .par_iter()
            .map(|p| chunk_text(&p.doc.text, embedder, copts))
            .collect();
        let mut docs = Vec::with_capacity(batch.len());
        for (p, c) in batch.into_iter().zip(chunked) {
            let chunks = c?;
            if chunks.is_empty() {
                self.summary.failed.push(Failure {
                    location: p.doc.location.clone(),
                    id: Some(p.doc.meta.id.clone()),
                    reason: "no text to index".into(),
                });
                continue;
            }
            docs.push((p, chunks));
        }
        self.clock.lap(0, &mut t);
        let inputs: Vec<String> = docs
            .iter()
            .flat_map(|(p, cs)| {
                cs.iter()
                    .map(|c| embed_input(&p.doc.meta.title, &c.heading_path, &c.text))
            })
            .collect();
        let mut vecs: Vec<Vec<f32>> = Vec::with_capacity(inputs.len());
        for group in inputs.chunks(self.opts.embed_batch.max(1)) {
            let refs: Vec<&str> = group.iter().map(String::as_str).collect();
            let out = embedder.embed(&refs)?;
            if out.len() != refs.len() {
                return Err(Error::Embedding(format!(
                    "embedder returned {} vectors for {} texts",
                    out.len(),
                    refs.len()
                )));
            }
            vecs.extend(out);
        }
        let dim = self.dim;
        if let Some(v) = vecs.iter().find(|v| v.len() != dim) {
            return Err(Error::Embedding(format!(
                "embedder returned {} dims, expected {dim}",
                v.len()
            )));
        }
        self.clock.lap(1, &mut t);
        let mut vi = vecs.into_iter();
        for (p, chunks) in docs {
            let id = p.doc.meta.id.clone();
            if self.remove_doc(&id).is_some() {
                self.summary.updated += 1;
            } else {
                self.summary.added += 1;
            }
            let doc_ord = self.manifest.doc_records;
            let first_row = self.manifest.rows;
            for (ci, c) in chunks.iter().enumerate() {
                let v = vi.next().expect("one vector per chunk, checked above");
                let row = self.manifest.rows;
                self.vectors.write(bytemuck::cast_slice(&v))?;
                let heading = c.heading_path.join("\u{1f}");
                let rec = ChunkRec {
                    doc: u32::try_from(doc_ord)
                        .map_err(|_| Error::InvalidArgument("too many documents".into()))?,
                    chunk: ci as u32,
                    text_off: self.chunks_txt.len,
                    heading_len: heading.len() as u32,
                    text_len: c.text.len() as u32,
                    start: c.start as u32,
                    end: c.end as u32,
                };
                self.chunks_txt.write(heading.as_bytes())?;
                self.chunks_txt.write(c.text.as_bytes())?;
                self.chunks_idx.write(bytemuck::bytes_of(&rec))?;
                self.writer.add_document(bm25::chunk_doc(
                    &self.fields,
                    &p.doc.meta,
                    &c.text,
                    &c.heading_path,
                    row,
                ))?;
                store::bit_set(&mut self.alive, row as usize, true);
                self.manifest.rows += 1;
            }
            self.summary.chunks_added += chunks.len() as u64;
            let stored = StoredDoc {
                meta: p.doc.meta,
                hash: p.hash.clone(),
                origin: p.doc.origin.clone(),
                first_row,
                n_chunks: chunks.len() as u32,
            };
            let mut line = serde_json::to_vec(&stored).expect("plain struct serialises");
            line.push(b'\n');
            let rec = DocRec {
                off: self.docs_jsonl.len,
                len: line.len() as u64 - 1,
            };
            self.docs_jsonl.write(&line)?;
            self.docs_idx.write(bytemuck::bytes_of(&rec))?;
            self.manifest.doc_records += 1;
            self.catalog.insert(
                id,
                CatalogEntry {
                    hash: p.hash,
                    origin: p.doc.origin,
                    doc: doc_ord,
                    first_row,
                    n_chunks: chunks.len() as u32,
                },
            );
            self.dirty = true;
            self.since_checkpoint += 1;
        }
        self.clock.lap(2, &mut t);
        if self.since_checkpoint >= self.opts.checkpoint_docs.max(1) {
            self.commit()?;
        }
        Ok(())
    }

    fn prune(&mut self, origin: &str) {
        let gone: Vec<String> = self
            .catalog
            .iter()
            .filter(|(id, e)| e.origin == origin && !self.seen.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if self.remove_doc(&id).is_some() {
                self.summary.removed += 1;
            }
        }
    }

    fn commit(&mut self) -> Result<()> {
        let mut t = Instant::now();
        for a in [
            &mut self.vectors,
            &mut self.chunks_idx,
            &mut self.chunks_txt,
            &mut self.docs_idx,
            &mut self.docs_jsonl,
        ] {
            a.sync()?;
        }
        let prev = self.manifest.generation;
        let g = prev + 1;
        let rows = self.manifest.rows as usize;
        if self.alive.len() < rows.div_ceil(64) {
            self.alive.resize(rows.div_ceil(64), 0);
        }
        store::write_atomic(
            &self.dir.join(store::alive_name(g)),
            &store::bits_bytes(&self.alive),
        )?;
        let cat = serde_json::to_vec(&self.catalog).expect("plain map serialises");
        store::write_atomic(&self.dir.join(store::catalog_name(g)), &cat)?;
        let live_chunks: u64 = self.alive.iter().map(|x| u64::from(x.count_ones())).sum();
        let mut hnsw_on = false;
        // Once built, the graph is kept (a removal or a smaller threshold does not
        // throw it away); it is extended with the rows appended since.
        if rows > 0 && (rows >= self.opts.hnsw_min_rows || self.manifest.hnsw) {
            self.clock.lap(3, &mut t);
            let dim = self.dim;
            let mut h = match self.hnsw.take() {
                Some(h) => h,
                None if self.manifest.hnsw => {
                    Hnsw::load(&self.dir.join(store::hnsw_name(prev)), dim)?
                }
                None => Hnsw::new(dim, self.opts.hnsw),
            };
            let vpath = self.dir.join(store::VECTORS);
            let map =
                store::map(&vpath, self.vectors.len)?.expect("rows > 0 so the file is not empty");
            let data: &[f32] = bytemuck::cast_slice(&map[..self.vectors.len as usize]);
            h.extend(data);
            self.clock.lap(4, &mut t);
            h.save(&self.dir.join(store::hnsw_name(g)))?;
            self.clock.lap(5, &mut t);
            self.hnsw = Some(h);
            hnsw_on = true;
        }
        store::sync_dir(&self.dir)?;
        let mut m = self.manifest.clone();
        m.generation = g;
        m.chunks_txt_bytes = self.chunks_txt.len;
        m.docs_jsonl_bytes = self.docs_jsonl.len;
        m.live_docs = self.catalog.len() as u64;
        m.live_chunks = live_chunks;
        m.hnsw = hnsw_on;
        let payload = serde_json::to_string(&m).expect("plain struct serialises");
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.manifest = m;
        self.dirty = false;
        self.since_checkpoint = 0;
        collect_garbage(&self.dir, g);
        self.clock.lap(3, &mut t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HashEmbedder;
    use crate::{Index, Mode, SearchRequest};
    use std::sync::Arc;

    fn emb() -> Arc<dyn Embedder> {
        Arc::new(HashEmbedder::new(64))
    }

    fn jsonl(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n")).expect("write jsonl");
        p
    }

    fn rec(id: &str, title: &str, text: &str, extra: &str) -> String {
        format!(
            r#"{{"id":"{id}","source":"papers","title":"{title}","authors":["Ada Lovelace","Bob*"],"text":"{text}","url":"https://x/{id}","date_published":"2021-05-0{d}T00:00:00Z","tags":["Alignment"]{extra}}}"#,
            d = id.len() % 9 + 1
        )
    }

    #[test]
    fn rerank_demotes_a_note_and_is_off_by_default() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let lines = vec![
            rec(
                "note",
                "Reward hacking",
                "Reward hacking, reward hacking: I'm not going to summarize it.",
                "",
            ),
            rec(
                "content",
                "Specification gaming examples",
                "A list of cases of reward hacking where agents exploit a flawed reward, such \
                 as a boat that circles to collect points instead of finishing the race.",
                "",
            ),
            rec(
                "other",
                "Interpretability",
                "Feature visualisation of neurons in vision models and what they detect.",
                "",
            ),
        ];
        let f = jsonl(tmp.path(), "x.jsonl", &lines);
        ingest(&data, &[f], emb(), &IngestOptions::default(), &NoProgress).expect("ingest");
        let idx = Index::open(&data, emb()).expect("open");
        let ids = |r: &SearchRequest| -> Vec<String> {
            idx.search(r)
                .expect("search")
                .into_iter()
                .map(|h| h.id)
                .collect()
        };
        let mut r = SearchRequest::new("reward hacking", 3);
        assert!(r.rerank.is_off(), "off by default");
        assert_eq!(ids(&r)[0], "note", "fused order puts the note first");
        r.rerank = crate::Rerank {
            depth: 10,
            quality: 5.0,
            ..crate::Rerank::OFF
        };
        let got = ids(&r);
        assert_eq!(got[0], "content", "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("note"), "{got:?}");
        let feats = idx.rerank_candidates(&r).expect("features");
        let pen = |id: &str| {
            feats
                .iter()
                .find(|f| f.id == id)
                .expect("candidate")
                .penalty
        };
        assert_eq!((pen("note"), pen("content")), (1.0, 0.0));
        // Reranking is for hybrid document results only.
        r.mode = Mode::Bm25;
        assert_eq!(ids(&r)[0], "note");
        assert!(idx.rerank_candidates(&r).expect("features").is_empty());
    }

    #[test]
    fn incremental_update_prune_and_search() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        let lines = vec![
            rec(
                "a",
                "Reward hacking",
                "Agents exploit misspecified reward functions in games.",
                "",
            ),
            rec(
                "bb",
                "Interpretability",
                "Circuits in vision models reveal curve detectors.",
                "",
            ),
            "{broken".to_string(),
            rec(
                "ccc",
                "Corrigibility",
                "An agent that accepts shutdown and correction.",
                r#","newsletter":7"#,
            ),
        ];
        let f = jsonl(&src, "c.jsonl", &lines);
        let opts = IngestOptions::default();
        let s = ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        assert_eq!((s.added, s.updated, s.skipped), (3, 0, 0));
        assert_eq!(s.failed.len(), 1);
        assert!(
            s.failed[0].location.ends_with("c.jsonl:3"),
            "{:?}",
            s.failed
        );

        let idx = Index::open(&data, emb()).expect("open");
        assert_eq!(idx.stats().expect("stats").docs, 3);
        for mode in Mode::ALL {
            let mut r = SearchRequest::new("shutdown correction", 2);
            r.mode = mode;
            let hits = idx.search(&r).expect("search");
            assert_eq!(hits[0].id, "ccc", "{mode:?}");
        }
        let d = idx.document("ccc").expect("doc").expect("exists");
        assert_eq!(d.meta.extra.get("newsletter"), Some(&serde_json::json!(7)));
        assert_eq!(d.chunks.len(), 1);

        // filters
        let mut r = SearchRequest::new("agent", 10);
        r.filters.author = vec!["bob".into()];
        assert_eq!(idx.search(&r).expect("s").len(), 3);
        r.filters.author = vec!["nobody".into()];
        assert!(idx.search(&r).expect("s").is_empty());
        r.filters = crate::Filters {
            since: Some("2021-05-04".into()),
            ..Default::default()
        };
        let ids: Vec<String> = idx
            .search(&r)
            .expect("s")
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(ids, vec!["ccc".to_string()]);
        r.filters = crate::Filters {
            since: Some("not a date".into()),
            ..Default::default()
        };
        assert!(matches!(idx.search(&r), Err(Error::InvalidArgument(_))));

        // Same input again: everything skipped, no new generation.
        let s2 =
            ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        assert_eq!(
            (s2.added, s2.updated, s2.skipped, s2.generation),
            (0, 0, 3, s.generation)
        );

        // Change one, drop one, prune.
        let lines = vec![
            rec(
                "a",
                "Reward hacking",
                "Specification gaming: boats spin in circles for points.",
                "",
            ),
            rec(
                "ccc",
                "Corrigibility",
                "An agent that accepts shutdown and correction.",
                r#","newsletter":7"#,
            ),
        ];
        jsonl(&src, "c.jsonl", &lines);
        let popts = IngestOptions {
            prune: true,
            ..IngestOptions::default()
        };
        let s3 =
            ingest(&data, std::slice::from_ref(&f), emb(), &popts, &NoProgress).expect("ingest");
        assert_eq!((s3.added, s3.updated, s3.skipped, s3.removed), (0, 1, 1, 1));
        assert_eq!(s3.docs, 2);
        assert!(idx.refresh().expect("refresh"));
        assert!(idx.document("bb").expect("doc").is_none());
        let hits = idx
            .search(&SearchRequest::new("boats spin circles", 5))
            .expect("s");
        assert_eq!(hits[0].id, "a");
        assert!(hits[0].passage.text.contains("boats"));
        assert!(hits.iter().all(|h| h.id != "bb"));
        // Only the current and previous generation files remain.
        let gens: Vec<String> = std::fs::read_dir(store::index_dir(&data))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("alive-"))
            .collect();
        assert_eq!(gens.len(), 2, "{gens:?}");
    }

    fn ids(hits: &[crate::SearchHit]) -> Vec<&str> {
        hits.iter().map(|h| h.id.as_str()).collect()
    }

    fn three_docs(dir: &Path) -> PathBuf {
        jsonl(
            dir,
            "c.jsonl",
            &[
                rec(
                    "a",
                    "Reward hacking",
                    "Agents exploit misspecified reward functions in games.",
                    "",
                ),
                rec(
                    "bb",
                    "Interpretability",
                    "Circuits in vision models reveal curve detectors.",
                    "",
                ),
                rec(
                    "ccc",
                    "Corrigibility",
                    "An agent that accepts shutdown and correction.",
                    "",
                ),
            ],
        )
    }

    #[test]
    fn remove_documents_from_every_retriever_and_reingest_restores() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let f = three_docs(tmp.path());
        let opts = IngestOptions::default();
        let s = ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        let idx = Index::open(&data, emb()).expect("open");
        let query = |idx: &Index, q: &str, mode: Mode| {
            let mut r = SearchRequest::new(q, 10);
            r.mode = mode;
            idx.search(&r).expect("search")
        };
        for mode in Mode::ALL {
            assert_eq!(
                query(&idx, "shutdown correction", mode)[0].id,
                "ccc",
                "{mode:?}"
            );
        }

        let r = remove_documents(&data, &["ccc", "nope", "ccc"]).expect("remove");
        assert_eq!(
            r.removed,
            vec![RemovedDoc {
                id: "ccc".into(),
                chunks: 1
            }]
        );
        assert_eq!(r.not_found, vec!["nope".to_string()]);
        assert_eq!((r.docs, r.chunks), (2, 2));
        assert_eq!(r.generation, s.generation + 1);

        // A reader on the previous generation keeps working and still sees it.
        assert_eq!(
            query(&idx, "shutdown correction", Mode::Hybrid)[0].id,
            "ccc"
        );
        assert!(idx.document("ccc").expect("doc").is_some());
        assert!(idx.refresh().expect("refresh"));
        for mode in Mode::ALL {
            let hits = query(&idx, "shutdown correction agent", mode);
            assert!(!ids(&hits).contains(&"ccc"), "{mode:?}: {:?}", ids(&hits));
            // The others are untouched.
            assert_eq!(
                query(&idx, "misspecified reward games", mode)[0].id,
                "a",
                "{mode:?}"
            );
            let mut r = SearchRequest::new("shutdown correction", 10);
            r.mode = mode;
            r.chunk_level = true;
            let hits = idx.search(&r).expect("search");
            assert!(!ids(&hits).contains(&"ccc"), "{mode:?} chunks");
        }
        assert!(idx.document("ccc").expect("doc").is_none());
        let bb = idx.document("bb").expect("doc").expect("bb still there");
        assert!(bb.chunks[0].text.contains("curve detectors"));
        let st = idx.stats().expect("stats");
        assert_eq!((st.docs, st.chunks), (2, 2));
        // Durable: a fresh open sees the same.
        let fresh = Index::open(&data, emb()).expect("open");
        assert!(fresh.document("ccc").expect("doc").is_none());
        assert_eq!(fresh.stats().expect("stats").docs, 2);

        // Unknown ids only: reported, nothing committed.
        let again = remove_documents(&data, &["ccc"]).expect("remove");
        assert!(again.removed.is_empty());
        assert_eq!(again.not_found, vec!["ccc".to_string()]);
        assert_eq!(again.generation, r.generation);

        // Re-ingesting the unchanged source brings it back (and only it).
        let s2 =
            ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        assert_eq!((s2.added, s2.updated, s2.skipped), (1, 0, 2));
        assert!(idx.refresh().expect("refresh"));
        for mode in Mode::ALL {
            let hits = query(&idx, "shutdown correction", mode);
            assert_eq!(hits[0].id, "ccc", "{mode:?}");
            assert_eq!(ids(&hits).iter().filter(|i| **i == "ccc").count(), 1);
        }
        assert_eq!(idx.stats().expect("stats").docs, 3);
    }

    #[test]
    fn remove_from_a_missing_index_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let r = remove_documents(&data, &["x", "y"]).expect("remove");
        assert!(r.removed.is_empty());
        assert_eq!(r.not_found, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(r.generation, 0);
        assert!(!data.exists());
    }

    #[test]
    fn remove_respects_the_lock_and_an_uncommitted_removal_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let f = three_docs(tmp.path());
        let s = ingest(
            &data,
            std::slice::from_ref(&f),
            emb(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .expect("ingest");
        let dir = store::index_dir(&data);
        let lock = std::fs::File::open(dir.join(store::LOCK)).expect("lock file");
        lock.lock().expect("take lock");
        let e = remove_documents(&data, &["a"]).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        lock.unlock().expect("unlock");

        // A removal that dies before its commit point: deletes queued in tantivy,
        // half-written files of the next generation and a longer alive file on disk.
        {
            let opts = IngestOptions::default();
            let mut w = Writer::open(&dir, None, &opts).expect("writer");
            assert!(w.remove_doc("a").is_some());
            let g = s.generation + 1;
            std::fs::write(dir.join(store::alive_name(g)), b"\x00garbage").expect("w");
            std::fs::write(dir.join(store::catalog_name(g)), b"{trunc").expect("w");
            // dropped without commit
        }
        let idx = Index::open(&data, emb()).expect("open");
        assert!(idx.document("a").expect("doc").is_some());
        assert_eq!(idx.stats().expect("stats").generation, s.generation);
        assert_eq!(
            idx.search(&SearchRequest::new("misspecified reward", 3))
                .expect("s")[0]
                .id,
            "a"
        );
        // Re-running completes the work.
        let r = remove_documents(&data, &["a"]).expect("remove");
        assert_eq!(r.removed.len(), 1);
        assert!(idx.refresh().expect("refresh"));
        assert!(idx.document("a").expect("doc").is_none());
        assert_eq!(idx.stats().expect("stats").docs, 2);
    }

    #[test]
    fn files_markdown_html_pdf_text() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("notes");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("a.md"), "# Mesa optimizers\n\nInner alignment failures.\n\n## Deception\n\nDeceptive alignment.").expect("w");
        std::fs::write(src.join("sub/b.html"), "<html><title>Debate</title><nav>menu</nav><h1>AI safety via debate</h1><p>Two agents argue.</p></html>").expect("w");
        std::fs::write(
            src.join("c.txt"),
            "Scalable oversight\n\nAmplification of humans.",
        )
        .expect("w");
        std::fs::write(src.join("d.pdf"), crate::source::test_pdf(None)).expect("w");
        std::fs::write(
            src.join("e.pdf"),
            crate::source::test_pdf(Some("Eliciting latent knowledge from models")),
        )
        .expect("w");
        std::fs::write(src.join("skip.bin"), b"\x00\x01").expect("w");
        let data = tmp.path().join("data");
        let s = ingest(
            &data,
            std::slice::from_ref(&src),
            emb(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .expect("ingest");
        assert_eq!(s.added, 4, "{s:?}");
        assert_eq!(s.failed.len(), 1);
        assert!(
            s.failed[0].reason.contains("no text layer"),
            "{:?}",
            s.failed
        );
        let idx = Index::open(&data, emb()).expect("open");
        let hits = idx.search(&SearchRequest::new("deceptive", 3)).expect("s");
        assert_eq!(hits[0].title, "Mesa optimizers");
        assert_eq!(hits[0].source, "notes");
        let mut r = SearchRequest::new("debate agents", 3);
        r.chunk_level = true;
        let hits = idx.search(&r).expect("s");
        assert_eq!(hits[0].title, "Debate");
        assert!(!hits[0].passage.text.contains("menu"));
        let hits = idx
            .search(&SearchRequest::new("latent knowledge", 3))
            .expect("s");
        assert!(hits[0].id.ends_with("e.pdf"));
    }

    #[test]
    fn hostile_files_fail_alone_and_good_ones_are_committed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("in");
        std::fs::create_dir_all(&src).expect("mkdir");
        // 40,000 nested elements overflowed the stack and aborted the whole process.
        let deep = format!("{}x{}", "<div>".repeat(40_000), "</div>".repeat(40_000));
        std::fs::write(src.join("deep.html"), deep).expect("w");
        std::fs::write(
            src.join("good.txt"),
            "Corrigibility\n\nAn agent that accepts correction.",
        )
        .expect("w");
        // A 1.5 MiB record beside small ones, under a 1 MiB cap (the default is 8 MiB).
        let big = "word ".repeat(300_000);
        let lines = vec![
            rec(
                "small1",
                "Reward hacking",
                "Specification gaming examples.",
                "",
            ),
            rec("huge", "Huge", &big, ""),
            rec("small2", "Debate", "Two agents argue before a judge.", ""),
        ];
        jsonl(&src, "papers.jsonl", &lines);
        let opts = IngestOptions {
            max_record_bytes: 1 << 20,
            ..IngestOptions::default()
        };
        let data = tmp.path().join("data");
        let s =
            ingest(&data, std::slice::from_ref(&src), emb(), &opts, &NoProgress).expect("ingest");
        assert_eq!(s.added, 3, "{s:?}");
        let mut reasons: Vec<(&str, &str)> = s
            .failed
            .iter()
            .map(|f| (f.location.as_str(), f.reason.as_str()))
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].0.ends_with("deep.html"), "{reasons:?}");
        assert!(reasons[0].1.contains("nested more than"), "{reasons:?}");
        assert!(reasons[1].0.ends_with("papers.jsonl:2"), "{reasons:?}");
        assert!(
            reasons[1]
                .1
                .contains("the record is 1.4 MiB, over the 1.0 MiB limit"),
            "{reasons:?}"
        );
        let idx = Index::open(&data, emb()).expect("open");
        for (q, want) in [
            ("corrigibility correction", "good.txt"),
            ("judge", "small2"),
        ] {
            let hits = idx.search(&SearchRequest::new(q, 3)).expect("s");
            assert!(hits[0].id.ends_with(want), "{q}: {:?}", ids(&hits));
        }
    }

    #[test]
    fn lock_reset_and_embedder_mismatch() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let f = jsonl(
            tmp.path(),
            "x.jsonl",
            &[rec("a", "T", "some text here", "")],
        );
        ingest(
            &data,
            std::slice::from_ref(&f),
            emb(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .expect("ingest");
        // Held lock -> Locked.
        let lock =
            std::fs::File::open(store::index_dir(&data).join(store::LOCK)).expect("lock file");
        lock.lock().expect("take lock");
        let e = ingest(
            &data,
            std::slice::from_ref(&f),
            emb(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        lock.unlock().expect("unlock");
        // Other embedder -> clear message, then reset works.
        let other: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(32));
        let e = Index::open(&data, other.clone()).unwrap_err();
        assert!(e.to_string().contains("re-ingest"), "{e}");
        let e = ingest(
            &data,
            std::slice::from_ref(&f),
            other.clone(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(e, Error::EmbedderMismatch { .. }));
        let reset = IngestOptions {
            reset: true,
            ..IngestOptions::default()
        };
        let s = ingest(
            &data,
            std::slice::from_ref(&f),
            other.clone(),
            &reset,
            &NoProgress,
        )
        .expect("reset");
        assert_eq!(s.added, 1);
        assert_eq!(
            Index::open(&data, other)
                .expect("open")
                .stats()
                .expect("s")
                .docs,
            1
        );
    }

    #[test]
    fn hnsw_kicks_in_and_survives_incremental_ingest() {
        // Wide vectors so the unique word of each document does not collide.
        let emb = || -> Arc<dyn Embedder> { Arc::new(HashEmbedder::new(4096)) };
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let lines: Vec<String> = (0..300)
            .map(|i| {
                rec(
                    &format!("d{i}"),
                    &format!("Topic {i}"),
                    &format!("word{i} alpha{} beta{} gamma{}", i % 7, i % 11, i % 13),
                    "",
                )
            })
            .collect();
        let f = jsonl(tmp.path(), "x.jsonl", &lines[..150]);
        let opts = IngestOptions {
            hnsw_min_rows: 100,
            checkpoint_docs: 60,
            ..IngestOptions::default()
        };
        ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        jsonl(tmp.path(), "x.jsonl", &lines);
        let s = ingest(&data, std::slice::from_ref(&f), emb(), &opts, &NoProgress).expect("ingest");
        assert_eq!((s.added, s.skipped), (150, 150));
        let idx = Index::open(&data, emb()).expect("open");
        let st = idx.stats().expect("stats");
        assert!(st.hnsw && st.chunks == 300, "{st:?}");
        // The document's own embedding input: its vector is the unique best match.
        let mut r = SearchRequest::new("Topic 277\nword277 alpha4 beta2 gamma4", 1);
        r.mode = Mode::Dense;
        r.k = 3;
        let got = idx.search(&r).expect("s");
        assert_eq!(got[0].id, "d277");

        // Removal (with default options, i.e. a far higher HNSW threshold) keeps the
        // graph, and the removed rows never come back from it.
        let rm = remove_documents(&data, &["d277", "d3"]).expect("remove");
        assert_eq!(rm.removed.len(), 2);
        assert!(idx.refresh().expect("refresh"));
        let st = idx.stats().expect("stats");
        assert!(st.hnsw && st.chunks == 298, "{st:?}");
        let got = idx.search(&r).expect("s");
        assert!(got.iter().all(|h| h.id != "d277"), "{:?}", ids(&got));
        r.k = 300;
        let all = idx.search(&r).expect("s");
        assert!(
            all.iter().all(|h| h.id != "d277" && h.id != "d3"),
            "{:?}",
            ids(&all)
        );
        assert!(all.len() >= 200, "{}", all.len());
    }
}
