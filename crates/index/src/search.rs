//! Opening a data directory for search: a consistent snapshot of the committed
//! generation (tantivy searcher + memory-mapped vectors and records), BM25, dense and
//! hybrid search with filters, document-level aggregation, reranking of hybrid
//! document results (`rerank.rs`) and passages.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query};
use tantivy::{IndexReader, ReloadPolicy, Searcher};

use crate::bm25::{self, Fields};
use crate::embed::Team;
use crate::fusion::{self, Fusion};
use crate::rerank::{self, Rerank, RerankFeatures};
use crate::store::{self, ChunkRec, DocRec, IndexInfo, Manifest, StoredDoc};
use crate::vectors::{self, Scored};
use crate::{DocMeta, Embedder, Error, Result};

/// Longest query text used; longer queries are cut at a character boundary.
pub const MAX_QUERY_CHARS: usize = 2_000;
/// Most results one search returns.
pub const MAX_K: usize = 1_000;

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Dense,
    #[default]
    Hybrid,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Bm25, Mode::Dense, Mode::Hybrid];
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Dense => "dense",
            Mode::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "bm25" => Ok(Mode::Bm25),
            "dense" => Ok(Mode::Dense),
            "hybrid" => Ok(Mode::Hybrid),
            _ => Err(Error::InvalidArgument(format!(
                "unknown mode {s:?} (bm25, dense or hybrid)"
            ))),
        }
    }
}

/// Restrictions on which documents match. Values of one field OR together
/// (case-insensitive exact match); different fields AND. Dates are inclusive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub source: Vec<String>,
    #[serde(default)]
    pub author: Vec<String>,
    #[serde(default)]
    pub tag: Vec<String>,
    /// `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or RFC 3339.
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
            && self.author.is_empty()
            && self.tag.is_empty()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// One search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    pub query: String,
    pub k: usize,
    pub mode: Mode,
    pub fusion: Fusion,
    pub filters: Filters,
    /// Return chunks instead of documents (best chunk per document).
    pub chunk_level: bool,
    /// Candidates taken from each retriever before fusion, in chunks (at least
    /// `4 * k` for document results, `2 * k` for chunk results). Fixed by default so
    /// that fused scores, and hence the top results, do not depend on `k`.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Second stage of hybrid document-level search ([`Rerank`]; [`Rerank::OFF`] keeps the
    /// fused order). Ignored by BM25 and dense search and by chunk-level results.
    #[serde(default)]
    pub rerank: Rerank,
}

/// Default [`SearchRequest::depth`], chosen on the dev half of `eval/retrieval`.
pub const DEFAULT_DEPTH: usize = 400;

fn default_depth() -> usize {
    DEFAULT_DEPTH
}

impl SearchRequest {
    /// A hybrid, document-level request with default fusion and no filters.
    pub fn new(query: impl Into<String>, k: usize) -> Self {
        Self {
            query: query.into(),
            k,
            mode: Mode::Hybrid,
            fusion: Fusion::default(),
            filters: Filters::default(),
            chunk_level: false,
            depth: DEFAULT_DEPTH,
            rerank: Rerank::default(),
        }
    }
}

/// A chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passage {
    /// Chunk number within the document (0-based).
    pub chunk: u32,
    pub text: String,
    pub heading_path: Vec<String>,
    /// Character offsets of `text` in the document text.
    pub start: usize,
    pub end: usize,
}

/// One result. Serialises to the `overseer search --json` result object:
/// `passage` is the chunk text, its offsets are `passage_start`/`passage_end`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: String,
    pub title: String,
    pub authors: Vec<String>,
    pub date: Option<String>,
    pub url: Option<String>,
    pub source: String,
    pub score: f32,
    pub passage: Passage,
}

impl Serialize for SearchHit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            id: &'a str,
            title: &'a str,
            url: &'a Option<String>,
            score: f32,
            passage: &'a str,
            passage_start: usize,
            passage_end: usize,
            chunk: u32,
            heading_path: &'a [String],
            authors: &'a [String],
            date: &'a Option<String>,
            source: &'a str,
        }
        Flat {
            id: &self.id,
            title: &self.title,
            url: &self.url,
            score: self.score,
            passage: &self.passage.text,
            passage_start: self.passage.start,
            passage_end: self.passage.end,
            chunk: self.passage.chunk,
            heading_path: &self.passage.heading_path,
            authors: &self.authors,
            date: &self.date,
            source: &self.source,
        }
        .serialize(s)
    }
}

/// A document with its chunks, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    #[serde(flatten)]
    pub meta: DocMeta,
    pub chunks: Vec<Passage>,
}

/// A live document as [`Index::for_each_document`] lists it: its metadata, where it
/// sits in ingest order and the mean of its chunk vectors.
#[derive(Debug, Clone)]
pub struct ListedDoc {
    /// Position in ingest order (the document record number): a document ingested (or
    /// re-ingested with new content) after [`Index::sequence`] returned `s` has
    /// `seq >= s`.
    pub seq: u64,
    pub meta: DocMeta,
    /// Hash of the document's content as ingested (changes when its text does).
    pub hash: String,
    pub chunks: u32,
    /// Mean of the document's chunk vectors, scaled to unit length (a document-level
    /// embedding in the index's space).
    pub vector: Vec<f32>,
}

/// Size of the index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IndexStats {
    /// Live documents (0: nothing ingested yet).
    pub docs: u64,
    /// Live chunks.
    pub chunks: u64,
    /// Committed generation (0: never committed).
    pub generation: u64,
    /// Vector rows on disk, live or not.
    pub rows: u64,
    pub embedder: String,
    pub dim: usize,
    pub hnsw: bool,
}

/// Wall time of each stage of one search, in microseconds ([`Index::search_timed`]);
/// a stage the search did not run is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Query truncation, filter parsing, snapshot access.
    pub setup_us: f64,
    /// Tantivy BM25 top-`depth` chunks. In hybrid mode BM25 runs on a second thread
    /// at the same time as the filter, embedding and dense stages, so the stages add up
    /// to more than the total.
    pub bm25_us: f64,
    /// Rows allowed by the filters (dense and hybrid with filters only).
    pub filter_us: f64,
    /// Embedding the query.
    pub embed_us: f64,
    /// Exact or HNSW vector search.
    pub dense_us: f64,
    /// Fusion and document-level aggregation.
    pub fusion_us: f64,
    /// Reranking of hybrid document results (sentence and title embeddings included).
    pub rerank_us: f64,
    /// Reading passages and document records of the hits.
    pub assemble_us: f64,
}

/// Cut `query` to at most [`MAX_QUERY_CHARS`] characters; `true` when it was cut.
pub fn truncate_query(query: &str) -> (&str, bool) {
    match query.char_indices().nth(MAX_QUERY_CHARS) {
        Some((b, _)) => (&query[..b], true),
        None => (query, false),
    }
}

/// The fields of a stored document record that a search hit shows (the record is a
/// [`StoredDoc`]: its `DocMeta` fields at top level, plus extra metadata not read here).
#[derive(Deserialize)]
struct HitMeta {
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    date: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: String,
}

/// A consistent view of one committed generation.
pub(crate) struct Snapshot {
    pub info: IndexInfo,
    pub manifest: Manifest,
    pub tantivy: tantivy::Index,
    pub fields: Fields,
    pub searcher: Searcher,
    _reader: IndexReader,
    vectors: Option<Mmap>,
    chunks_idx: Option<Mmap>,
    chunks_txt: Option<Mmap>,
    docs_idx: Option<Mmap>,
    docs_jsonl: Option<Mmap>,
    pub alive: Vec<u64>,
    pub hnsw: Option<crate::hnsw::Hnsw>,
    /// f16 copy of the vectors for exact search without HNSW, made on the first dense
    /// search (`None` inside: too large, or the CPU lacks F16C); see `vectors.rs`.
    half: std::sync::OnceLock<Option<vectors::HalfMatrix>>,
}

fn slice(m: &Option<Mmap>, len: u64) -> &[u8] {
    m.as_ref().map_or(&[][..], |m| &m[..len as usize])
}

impl Snapshot {
    pub fn dim(&self) -> usize {
        self.info.dim
    }

    pub fn vectors(&self) -> &[f32] {
        let len = self.manifest.rows * self.info.dim as u64 * 4;
        bytemuck::cast_slice(slice(&self.vectors, len))
    }

    pub fn chunk_recs(&self) -> &[ChunkRec] {
        let len = self.manifest.rows * std::mem::size_of::<ChunkRec>() as u64;
        bytemuck::cast_slice(slice(&self.chunks_idx, len))
    }

    fn doc_recs(&self) -> &[DocRec] {
        let len = self.manifest.doc_records * std::mem::size_of::<DocRec>() as u64;
        bytemuck::cast_slice(slice(&self.docs_idx, len))
    }

    pub fn is_alive(&self, row: usize) -> bool {
        store::bit_get(&self.alive, row)
    }

    fn corrupt(&self, what: &str) -> Error {
        Error::Corrupt {
            path: PathBuf::from(what),
            reason: "record points outside the committed data".into(),
        }
    }

    pub fn passage(&self, row: u32) -> Result<(u32, Passage)> {
        let rec = *self
            .chunk_recs()
            .get(row as usize)
            .ok_or_else(|| self.corrupt(store::CHUNKS_IDX))?;
        let txt = slice(&self.chunks_txt, self.manifest.chunks_txt_bytes);
        let a = rec.text_off as usize;
        let b = a + rec.heading_len as usize;
        let c = b + rec.text_len as usize;
        if c > txt.len() {
            return Err(self.corrupt(store::CHUNKS_TXT));
        }
        let heading = String::from_utf8_lossy(&txt[a..b]);
        let heading_path = if heading.is_empty() {
            Vec::new()
        } else {
            heading.split('\u{1f}').map(str::to_string).collect()
        };
        Ok((
            rec.doc,
            Passage {
                chunk: rec.chunk,
                text: String::from_utf8_lossy(&txt[b..c]).into_owned(),
                heading_path,
                start: rec.start as usize,
                end: rec.end as usize,
            },
        ))
    }

    pub fn doc(&self, doc: u32) -> Result<StoredDoc> {
        self.doc_as(doc)
    }

    /// The stored record of document `doc`, read into `T` (fields `T` lacks are skipped
    /// unparsed: search hits read only [`HitMeta`], not the record's extra metadata).
    fn doc_as<T: serde::de::DeserializeOwned>(&self, doc: u32) -> Result<T> {
        let rec = *self
            .doc_recs()
            .get(doc as usize)
            .ok_or_else(|| self.corrupt(store::DOCS_IDX))?;
        let all = slice(&self.docs_jsonl, self.manifest.docs_jsonl_bytes);
        let (a, b) = (rec.off as usize, (rec.off + rec.len) as usize);
        if b > all.len() {
            return Err(self.corrupt(store::DOCS_JSONL));
        }
        serde_json::from_slice(&all[a..b]).map_err(|e| Error::Corrupt {
            path: PathBuf::from(store::DOCS_JSONL),
            reason: e.to_string(),
        })
    }

    /// Rows (live) matched by a tantivy query.
    fn rows_matching(&self, q: &dyn Query) -> Result<Vec<u64>> {
        let addrs = self.searcher.search(q, &DocSetCollector)?;
        let mut bits = vec![0u64; (self.manifest.rows as usize).div_ceil(64)];
        let mut cols = HashMap::new();
        for a in addrs {
            let col = match cols.entry(a.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    self.searcher
                        .segment_reader(a.segment_ord)
                        .fast_fields()
                        .u64("row")?,
                ),
            };
            if let Some(r) = col.first(a.doc_id)
                && self.is_alive(r as usize)
            {
                store::bit_set(&mut bits, r as usize, true);
            }
        }
        Ok(bits)
    }

    fn bm25(
        &self,
        query: &str,
        filter: Option<Box<dyn Query>>,
        n: usize,
    ) -> Result<Vec<(u32, f32)>> {
        let q = bm25::text_query(&self.tantivy, &self.fields, query);
        let q: Box<dyn Query> = match filter {
            Some(f) => Box::new(BooleanQuery::new(vec![(Occur::Must, q), (Occur::Must, f)])),
            None => q,
        };
        let top = self.searcher.search(&q, &TopDocs::with_limit(n))?;
        let mut cols = HashMap::new();
        let mut out = Vec::with_capacity(top.len());
        for (score, a) in top {
            let col = match cols.entry(a.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    self.searcher
                        .segment_reader(a.segment_ord)
                        .fast_fields()
                        .u64("row")?,
                ),
            };
            if let Some(r) = col.first(a.doc_id)
                && self.is_alive(r as usize)
            {
                out.push((r as u32, score));
            }
        }
        Ok(out)
    }

    /// Exact top-`n` rows: through the f16 copy when there is one (same result, half the
    /// bytes read; see [`vectors::HalfMatrix::search`]).
    fn exact(
        &self,
        qv: &[f32],
        n: usize,
        allow: &(dyn Fn(usize) -> bool + Sync),
        team: Option<&Team>,
    ) -> Vec<Scored> {
        let half = self.half.get_or_init(|| {
            if self.hnsw.is_some() {
                None
            } else {
                vectors::HalfMatrix::new(self.vectors(), self.dim())
            }
        });
        match half {
            Some(h) => h.search(self.vectors(), qv, n, allow, team),
            None => vectors::exact_search(self.vectors(), self.dim(), qv, n, allow),
        }
    }

    fn dense(
        &self,
        qv: &[f32],
        allowed: Option<&[u64]>,
        n: usize,
        team: Option<&Team>,
    ) -> Vec<(u32, f32)> {
        let allow = |r: usize| self.is_alive(r) && allowed.is_none_or(|b| store::bit_get(b, r));
        let found: Vec<Scored> = match &self.hnsw {
            Some(h) => {
                let mut got = h.search(self.vectors(), qv, n, (2 * n).max(64), &allow);
                if got.len() < n && allowed.is_some() {
                    // A selective filter can starve the graph walk: fall back to exact.
                    got = vectors::exact_search(self.vectors(), self.dim(), qv, n, &allow);
                }
                got
            }
            None => self.exact(qv, n, &allow, team),
        };
        found.into_iter().map(|s| (s.row, s.score)).collect()
    }
}

fn open_snapshot(dir: &Path, embedder: &dyn Embedder) -> Result<Option<Snapshot>> {
    let Some(info) = store::read_info(dir)? else {
        return Ok(None);
    };
    if info.embedder != embedder.name() || info.dim != embedder.dim() {
        return Err(Error::EmbedderMismatch {
            dir: dir.to_path_buf(),
            index: format!("{} ({} dims)", info.embedder, info.dim),
            current: format!("{} ({} dims)", embedder.name(), embedder.dim()),
        });
    }
    let tdir = dir.join(store::TANTIVY);
    let tantivy = tantivy::Index::open_in_dir(&tdir)?;
    let fields = Fields::from_schema(&tantivy.schema())?;
    // The reader must see the same commit as the payload we read: retry on a race.
    let mut attempt = 0;
    let (payload, reader, searcher) = loop {
        let metas = tantivy.load_metas()?;
        let reader: IndexReader = tantivy
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let searcher = reader.searcher();
        let mut want: Vec<_> = metas.segments.iter().map(|s| s.id()).collect();
        let mut got: Vec<_> = searcher
            .segment_readers()
            .iter()
            .map(|s| s.segment_id())
            .collect();
        want.sort();
        got.sort();
        attempt += 1;
        if want == got || attempt >= 5 {
            break (metas.payload, reader, searcher);
        }
    };
    let Some(payload) = payload else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_str(&payload).map_err(|e| Error::Corrupt {
        path: tdir.join("meta.json"),
        reason: format!("commit payload: {e}"),
    })?;
    if manifest.format != store::FORMAT_VERSION {
        return Err(Error::IncompatibleVersion {
            dir: dir.to_path_buf(),
            found: format!("format {}", manifest.format),
            expected: format!("format {}", store::FORMAT_VERSION),
        });
    }
    let m = &manifest;
    let dim = info.dim as u64;
    let vectors = store::map(&dir.join(store::VECTORS), m.rows * dim * 4)?;
    let chunks_idx = store::map(
        &dir.join(store::CHUNKS_IDX),
        m.rows * std::mem::size_of::<ChunkRec>() as u64,
    )?;
    let chunks_txt = store::map(&dir.join(store::CHUNKS_TXT), m.chunks_txt_bytes)?;
    let docs_idx = store::map(
        &dir.join(store::DOCS_IDX),
        m.doc_records * std::mem::size_of::<DocRec>() as u64,
    )?;
    let docs_jsonl = store::map(&dir.join(store::DOCS_JSONL), m.docs_jsonl_bytes)?;
    let alive = store::read_bits(&dir.join(store::alive_name(m.generation)))?;
    let hnsw = if m.hnsw {
        Some(crate::hnsw::Hnsw::load(
            &dir.join(store::hnsw_name(m.generation)),
            info.dim,
        )?)
    } else {
        None
    };
    Ok(Some(Snapshot {
        info,
        manifest,
        tantivy,
        fields,
        searcher,
        _reader: reader,
        vectors,
        chunks_idx,
        chunks_txt,
        docs_idx,
        docs_jsonl,
        alive,
        hnsw,
        half: std::sync::OnceLock::new(),
    }))
}

/// Open with retries: an ingest committing twice while we open can delete the files
/// of the generation we were about to read.
pub(crate) fn open_snapshot_retry(dir: &Path, embedder: &dyn Embedder) -> Result<Option<Snapshot>> {
    let mut last = None;
    for _ in 0..5 {
        match open_snapshot(dir, embedder) {
            Err(e @ Error::Io { .. }) | Err(e @ Error::Tantivy(_)) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
    Err(last.expect("loop ran at least once"))
}

/// A data directory opened for search. Cheap to share (`&self` methods, `Sync`).
pub struct Index {
    dir: PathBuf,
    embedder: Arc<dyn Embedder>,
    snap: RwLock<Option<Arc<Snapshot>>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Open the index in `data_dir` (an empty index if nothing was ingested yet).
    ///
    /// Errors: `IncompatibleVersion` / `EmbedderMismatch` (re-ingest), `Corrupt`, I/O.
    pub fn open(data_dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Index> {
        let dir = store::index_dir(data_dir);
        let snap = open_snapshot_retry(&dir, embedder.as_ref())?.map(Arc::new);
        Ok(Index {
            dir,
            embedder,
            snap: RwLock::new(snap),
        })
    }

    /// Pick up a newer committed generation, if any (for long-lived servers).
    pub fn refresh(&self) -> Result<bool> {
        let new = open_snapshot_retry(&self.dir, self.embedder.as_ref())?;
        let cur_gen = self.current().map(|s| s.manifest.generation);
        let new_gen = new.as_ref().map(|s| s.manifest.generation);
        if cur_gen == new_gen {
            return Ok(false);
        }
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = new.map(Arc::new);
        Ok(true)
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snap.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The embedder queries are embedded with.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Document and chunk counts.
    pub fn stats(&self) -> Result<IndexStats> {
        Ok(match self.current() {
            None => IndexStats {
                embedder: self.embedder.name().to_string(),
                dim: self.embedder.dim(),
                ..IndexStats::default()
            },
            Some(s) => IndexStats {
                docs: s.manifest.live_docs,
                chunks: s.manifest.live_chunks,
                generation: s.manifest.generation,
                rows: s.manifest.rows,
                embedder: s.info.embedder.clone(),
                dim: s.info.dim,
                hnsw: s.hnsw.is_some(),
            },
        })
    }

    /// The ingest sequence of the committed generation: every document ingested after
    /// this call has a [`ListedDoc::seq`] at or above the returned value (0 when nothing
    /// was ingested).
    pub fn sequence(&self) -> u64 {
        self.current().map_or(0, |s| s.manifest.doc_records)
    }

    /// Call `f` with every live document in ingest order, one at a time (nothing is
    /// held across calls, so a caller can stream an index of any size). Documents
    /// without chunks (no text) are skipped. `f` returning an error stops the walk.
    ///
    /// Errors: `Corrupt` when a record points outside the committed data, or `f`'s.
    pub fn for_each_document(&self, f: &mut dyn FnMut(ListedDoc) -> Result<()>) -> Result<()> {
        let Some(s) = self.current() else {
            return Ok(());
        };
        let dim = s.dim();
        let vectors = s.vectors();
        for seq in 0..s.manifest.doc_records {
            let stored = s.doc(seq as u32)?;
            let first = stored.first_row as usize;
            let n = stored.n_chunks as usize;
            if n == 0 || first + n > s.manifest.rows as usize || !s.is_alive(first) {
                continue;
            }
            let mut vector = vec![0f32; dim];
            for row in vectors[first * dim..(first + n) * dim].chunks_exact(dim) {
                for (a, x) in vector.iter_mut().zip(row) {
                    *a += x;
                }
            }
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                vector.iter_mut().for_each(|x| *x /= norm);
            }
            f(ListedDoc {
                seq,
                meta: stored.meta,
                hash: stored.hash,
                chunks: stored.n_chunks,
                vector,
            })?;
        }
        Ok(())
    }

    /// The live documents whose chunks are nearest to `vector` (cosine, best chunk per
    /// document), best first, at most `n`.
    ///
    /// Errors: `InvalidArgument` when `vector` does not have the index's dimension;
    /// `Corrupt`.
    pub fn nearest_documents(&self, vector: &[f32], n: usize) -> Result<Vec<(String, f32)>> {
        let Some(s) = self.current() else {
            return Ok(Vec::new());
        };
        if vector.len() != s.dim() {
            return Err(Error::InvalidArgument(format!(
                "vector of dimension {} for an index of dimension {}",
                vector.len(),
                s.dim()
            )));
        }
        let mut out: Vec<(String, f32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Several chunks of one document can crowd the top rows: ask for more.
        for (row, score) in s.dense(vector, None, 4 * n + 8, None) {
            let (doc, _) = s.passage(row)?;
            if seen.insert(doc) {
                out.push((s.doc_as::<HitMeta>(doc)?.id, score));
                if out.len() == n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A document's metadata and chunks, `None` if no live document has this id.
    pub fn document(&self, id: &str) -> Result<Option<Document>> {
        let Some(s) = self.current() else {
            return Ok(None);
        };
        let q = tantivy::query::TermQuery::new(
            tantivy::Term::from_field_text(s.fields.doc_id, id),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let rows = s.rows_matching(&q)?;
        let Some(first) = (0..s.manifest.rows as usize).find(|&r| store::bit_get(&rows, r)) else {
            return Ok(None);
        };
        let (doc, _) = s.passage(first as u32)?;
        let stored = s.doc(doc)?;
        let chunks = (stored.first_row..stored.first_row + u64::from(stored.n_chunks))
            .map(|r| s.passage(r as u32).map(|(_, p)| p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Document {
            meta: stored.meta,
            chunks,
        }))
    }

    /// Search. An empty index gives no results; a query longer than
    /// [`MAX_QUERY_CHARS`] is truncated (see [`truncate_query`]).
    ///
    /// Errors: `InvalidArgument` (bad date), embedder and I/O failures.
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<SearchHit>> {
        self.search_timed(req).map(|(hits, _)| hits)
    }

    /// [`Index::search`], also returning how long each stage took (for benchmarks;
    /// `examples/search_latency.rs`).
    pub fn search_timed(&self, req: &SearchRequest) -> Result<(Vec<SearchHit>, StageTimes)> {
        self.search_inner(req, None)
    }

    /// What the reranker measures on the candidates of a hybrid document-level search
    /// (the top `req.rerank.depth` fused documents, in fused order), for tuning its
    /// weights offline (`examples/run_queries.rs --features`). Empty for other modes,
    /// chunk-level requests and `depth` 0.
    ///
    /// Errors: as [`Index::search`].
    pub fn rerank_candidates(&self, req: &SearchRequest) -> Result<Vec<RerankFeatures>> {
        let mut out = Vec::new();
        self.search_inner(req, Some(&mut out))?;
        Ok(out)
    }

    fn search_inner(
        &self,
        req: &SearchRequest,
        features: Option<&mut Vec<RerankFeatures>>,
    ) -> Result<(Vec<SearchHit>, StageTimes)> {
        let mut times = StageTimes::default();
        let mut clock = std::time::Instant::now();
        let mut lap = || {
            let now = std::time::Instant::now();
            let us = (now - clock).as_secs_f64() * 1e6;
            clock = now;
            us
        };
        let k = req.k.min(MAX_K);
        let (query, cut) = truncate_query(&req.query);
        if cut {
            tracing::warn!("query truncated to {MAX_QUERY_CHARS} characters");
        }
        let filter = {
            // Validate dates even on an empty index.
            let (_, f) = bm25::schema();
            bm25::filter_query(&f, &req.filters)?;
            self.current()
        };
        let Some(s) = filter else {
            return Ok((Vec::new(), times));
        };
        if k == 0 || query.trim().is_empty() {
            return Ok((Vec::new(), times));
        }
        let filter_q = bm25::filter_query(&s.fields, &req.filters)?;
        let n = if req.chunk_level {
            (2 * k).max(req.depth)
        } else {
            (4 * k).max(req.depth)
        }
        .max(1);
        times.setup_us = lap();
        let bm25 = || -> Result<(Vec<(u32, f32)>, f64)> {
            let t = std::time::Instant::now();
            let bm = s.bm25(query, filter_q.as_ref().map(|q| q.box_clone()), n)?;
            Ok((bm, t.elapsed().as_secs_f64() * 1e6))
        };
        let (bm, de, qv) = if req.mode == Mode::Bm25 {
            let (bm, us) = bm25()?;
            times.bm25_us = us;
            lap();
            (bm, Vec::new(), Vec::new())
        } else {
            // Hybrid: BM25 runs on the query team's helper thread while this thread starts
            // embedding the query (the team's first matmuls then run here alone; see
            // `Team::run_with_side`). The embedder's own team call reuses this team, and
            // the dense scan splits its rows across it.
            let mut bm_out = None;
            let side = || {
                if req.mode == Mode::Hybrid {
                    bm_out = Some(bm25());
                }
            };
            type Dense = (Vec<(u32, f32)>, Vec<f32>);
            let (de, qv) = Team::run_with_side(side, |team| -> Result<Dense> {
                let allowed = match &filter_q {
                    Some(q) => Some(s.rows_matching(q.as_ref())?),
                    None => None,
                };
                times.filter_us = lap();
                let qv = self
                    .embedder
                    .embed(&[query])?
                    .pop()
                    .ok_or_else(|| Error::Embedding("embedder returned no vector".into()))?;
                times.embed_us = lap();
                if qv.len() != s.dim() {
                    return Err(Error::Embedding(format!(
                        "query vector has {} dims, the index {}",
                        qv.len(),
                        s.dim()
                    )));
                }
                let found = s.dense(&qv, allowed.as_deref(), n, Some(team));
                times.dense_us = lap();
                Ok((found, qv))
            })?;
            let bm = match bm_out {
                Some(r) => {
                    let (bm, us) = r?;
                    times.bm25_us = us;
                    bm
                }
                None => Vec::new(),
            };
            (bm, de, qv)
        };
        let recs = s.chunk_recs();
        let doc_of = |row: u32| recs.get(row as usize).map_or(u32::MAX, |r| r.doc);
        let single = |l: &[(u32, f32)]| l.to_vec();
        // Chunk-level scores (also used to pick each document's passage).
        let chunk_scores = match req.mode {
            Mode::Bm25 => single(&bm),
            Mode::Dense => single(&de),
            Mode::Hybrid => fusion::fuse(&bm, &de, req.fusion),
        };
        let ranked: Vec<(u32, f32)> = if req.chunk_level {
            chunk_scores.iter().take(k).copied().collect()
        } else {
            let docs = match req.mode {
                Mode::Hybrid => fusion::fuse(
                    &fusion::to_docs(&bm, doc_of),
                    &fusion::to_docs(&de, doc_of),
                    req.fusion,
                ),
                _ => fusion::to_docs(&chunk_scores, doc_of),
            };
            // Best chunk of each document by chunk-level score.
            let mut best: rustc_hash::FxHashMap<u32, u32> = Default::default();
            for &(row, _) in &chunk_scores {
                best.entry(doc_of(row)).or_insert(row);
            }
            let mut docs: Vec<(u32, u32, f32)> = docs
                .into_iter()
                .filter_map(|(d, score)| best.get(&d).map(|&row| (d, row, score)))
                .collect();
            times.fusion_us = lap();
            if req.mode == Mode::Hybrid && !req.rerank.is_off() && !qv.is_empty() {
                let n = req.rerank.depth.min(docs.len());
                let found = self.rerank_features(&s, query, &qv, &docs[..n])?;
                match features {
                    Some(out) => *out = found,
                    None => rerank::reorder(&mut docs, &found, &req.rerank),
                }
                times.rerank_us = lap();
            }
            docs.into_iter()
                .take(k)
                .map(|(_, row, score)| (row, score))
                .collect()
        };
        if req.chunk_level {
            times.fusion_us = lap();
        }
        let mut hits = Vec::with_capacity(ranked.len());
        for (row, score) in ranked {
            let (doc, passage) = s.passage(row)?;
            let d: HitMeta = s.doc_as(doc)?;
            hits.push(SearchHit {
                id: d.id,
                title: d.title,
                authors: d.authors,
                date: d.date,
                url: d.url,
                source: d.source,
                score,
                passage,
            });
        }
        times.assemble_us = lap();
        Ok((hits, times))
    }

    /// [`RerankFeatures`] of `docs` (document, its best chunk's row, fused score), in
    /// order: one embedder call for the sentences of every passage and every title.
    fn rerank_features(
        &self,
        s: &Snapshot,
        query: &str,
        qv: &[f32],
        docs: &[(u32, u32, f32)],
    ) -> Result<Vec<RerankFeatures>> {
        let fused = rerank::min_max(&docs.iter().map(|d| d.2).collect::<Vec<_>>());
        let analyzer = s.tantivy.tokenizer_for_field(s.fields.text).ok();
        let query_words = content_words(analyzer.clone(), query);
        let mut texts: Vec<String> = Vec::new();
        let mut spans = Vec::with_capacity(docs.len());
        let mut items = Vec::with_capacity(docs.len());
        for &(d, row, _) in docs {
            let (_, passage) = s.passage(row)?;
            let meta: HitMeta = s.doc_as(d)?;
            let start = texts.len();
            texts.extend(
                rerank::sentences(&passage.text)
                    .into_iter()
                    .map(String::from),
            );
            spans.push(start..texts.len());
            let mut title = meta.title.trim().to_string();
            for h in &passage.heading_path {
                if !title.is_empty() {
                    title.push_str(" / ");
                }
                title.push_str(h);
            }
            items.push((meta.id, title, passage.text));
        }
        let first_title = texts.len();
        texts.extend(items.iter().map(|(_, t, _)| t.clone()));
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vecs = self.embedder.embed(&refs)?;
        if vecs.len() != refs.len() {
            return Err(Error::Embedding(format!(
                "embedder returned {} vectors for {} texts",
                vecs.len(),
                refs.len()
            )));
        }
        Ok(items
            .into_iter()
            .zip(spans)
            .enumerate()
            .map(|(i, ((id, title, text), span))| {
                let sentence = vecs[span]
                    .iter()
                    .map(|v| rerank::cos(qv, v))
                    .fold(0.0f32, f32::max);
                let title_sim = if title.is_empty() {
                    0.0
                } else {
                    rerank::cos(qv, &vecs[first_title + i])
                };
                let title_words = content_words(analyzer.clone(), &title);
                RerankFeatures {
                    id,
                    fused: fused[i],
                    sentence,
                    title: title_sim,
                    title_words: rerank::title_overlap(&query_words, &title_words),
                    penalty: rerank::quality_penalty(&text),
                }
            })
            .collect())
    }
}

/// Very common words (after English stemming: "does" is "doe"), left out of highlights
/// and of the reranker's title-word overlap.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "for", "from", "how", "in", "is", "it",
    "of", "on", "or", "that", "the", "this", "to", "was", "what", "when", "which", "who", "why",
    "with", "doe", "can", "i", "we", "you",
];

/// Distinct stemmed words of `text` that are not [`STOPWORDS`], under `analyzer` (the
/// index's text analyzer; tantivy's `en_stem` chain when `None`).
fn content_words(
    analyzer: Option<tantivy::tokenizer::TextAnalyzer>,
    text: &str,
) -> rustc_hash::FxHashSet<String> {
    let mut analyzer = analyzer.unwrap_or_else(bm25::stem_analyzer);
    let mut out = rustc_hash::FxHashSet::default();
    let mut ts = analyzer.token_stream(text);
    while ts.advance() {
        let t = &ts.token().text;
        if !STOPWORDS.contains(&t.as_str()) {
            out.insert(t.clone());
        }
    }
    out
}

/// Byte ranges of the words in `text` that match a query term (after English
/// stemming), for highlighting. Very common words are not highlighted.
pub fn highlight_spans(query: &str, text: &str) -> Vec<Range<usize>> {
    use tantivy::tokenizer::{
        Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
    };
    let mut analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build();
    let (query, _) = truncate_query(query);
    let mut terms = std::collections::HashSet::new();
    {
        let mut ts = analyzer.token_stream(query);
        while ts.advance() {
            let t = &ts.token().text;
            if !STOPWORDS.contains(&t.as_str()) {
                terms.insert(t.clone());
            }
        }
    }
    let mut out = Vec::new();
    let mut ts = analyzer.token_stream(text);
    while ts.advance() {
        let t = ts.token();
        if terms.contains(&t.text) {
            out.push(t.offset_from..t.offset_to);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_char_safe() {
        let q = "é".repeat(MAX_QUERY_CHARS + 10);
        let (t, cut) = truncate_query(&q);
        assert!(cut);
        assert_eq!(t.chars().count(), MAX_QUERY_CHARS);
        assert_eq!(truncate_query("short"), ("short", false));
    }

    #[test]
    fn highlights_stemmed_terms() {
        let text = "Rewards are hacked; the reward model hacks back.";
        let spans = highlight_spans("reward hacking", text);
        let words: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(words, vec!["Rewards", "hacked", "reward", "hacks"]);
        assert!(highlight_spans("the", text).is_empty());
    }

    #[test]
    fn hit_json_shape() {
        let h = SearchHit {
            id: "x".into(),
            title: "T".into(),
            authors: vec!["A".into()],
            date: None,
            url: Some("u".into()),
            source: "s".into(),
            score: 1.5,
            passage: Passage {
                chunk: 2,
                text: "p".into(),
                heading_path: vec![],
                start: 3,
                end: 4,
            },
        };
        let v = serde_json::to_value(&h).expect("json");
        assert_eq!(v["id"], "x");
        assert_eq!(v["passage"], "p");
        assert_eq!(v["passage_start"], 3);
        assert_eq!(v["passage_end"], 4);
        assert_eq!(v["score"], 1.5);
    }
}
