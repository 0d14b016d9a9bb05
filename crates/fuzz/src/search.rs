//! The search query path on a small index built once per process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use overseer_index::testing::HashEmbedder;
use overseer_index::{
    Embedder, Index, IngestOptions, Mode, NoProgress, SearchRequest, highlight_spans, ingest,
};

/// The documents of the fuzzing index (ARD JSONL).
const DOCS: &str = r#"{"id": "gh", "title": "Gradient hacking", "authors": ["A. Author", "B. Writer"], "date_published": "2021-03-04", "source": "lesswrong", "tags": ["inner alignment"], "text": "A model could influence its own gradient updates.\n\n## Detection\n\nWe could look for it with interpretability tools."}
{"id": "rh", "title": "Reward hacking", "authors": ["C. Person"], "date_published": "2019", "source": "arxiv", "text": "Agents exploit flaws in the reward function. Specification gaming is common in reinforcement learning."}
{"id": "da", "title": "Deceptive alignment", "source": "arxiv", "date_published": "2020-12-01T00:00:00Z", "text": "A mesa-optimizer may hide its goals to avoid gradient changes. Übermäßig viele Wörter, 日本語のテキスト, emoji 🙂."}
{"id": "ct", "title": "Corrigibility", "source": "miri", "tags": ["agent foundations", "decision theory"], "text": "An agent is corrigible when it accepts shutdown and correction. The off-switch game formalises this."}
{"id": "sx", "title": "Scalable oversight", "source": "alignmentforum", "summaries": ["Debate and amplification let weak judges supervise strong models."]}
"#;

/// The embedder of the fuzzing index.
pub(crate) fn embedder() -> Arc<dyn Embedder> {
    Arc::new(HashEmbedder::new(32))
}

/// A data folder holding an index of [`DOCS`], made on first use (it stays for the life
/// of the process; `None` if it could not be made, which fails the harnesses).
pub(crate) fn data_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, dir) = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let file = tmp.path().join("docs.jsonl");
        std::fs::write(&file, DOCS).unwrap_or_else(|e| panic!("write docs: {e}"));
        let data = tmp.path().join("data");
        let summary = ingest(
            &data,
            &[file],
            embedder(),
            &IngestOptions::default(),
            &NoProgress,
        )
        .unwrap_or_else(|e| panic!("ingest: {e}"));
        assert!(summary.failed.is_empty(), "{:?}", summary.failed);
        (tmp, data)
    });
    dir
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        Index::open(data_dir(), embedder()).unwrap_or_else(|e| panic!("open index: {e}"))
    })
}

/// Fuzz a search.
///
/// Input: byte 0 picks the mode (`% 3`: BM25, dense, hybrid) and chunk-level results
/// (bit 2); bytes 1-2 are `k` (little-endian u16); the rest, split at NUL bytes, is the
/// query, then optionally a source filter, an author filter, `since` and `until`.
/// A search either fails with an invalid-argument error or gives at most `k` hits with
/// finite scores, distinct documents for document-level results, and highlight spans
/// on character boundaries of the passage.
pub fn search(data: &[u8]) {
    let Some((head, rest)) = data.split_at_checked(3) else {
        return;
    };
    let k = usize::from(u16::from_le_bytes([head[1], head[2]]));
    let mut parts = rest
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let query = parts.next().unwrap_or_default();
    let mut req = SearchRequest::new(query.clone(), k);
    req.mode = match head[0] % 3 {
        0 => Mode::Bm25,
        1 => Mode::Dense,
        _ => Mode::Hybrid,
    };
    req.chunk_level = head[0] & 4 != 0;
    if let Some(s) = parts.next().filter(|s| !s.is_empty()) {
        req.filters.source.push(s);
    }
    if let Some(s) = parts.next().filter(|s| !s.is_empty()) {
        req.filters.author.push(s);
    }
    req.filters.since = parts.next().filter(|s| !s.is_empty());
    req.filters.until = parts.next().filter(|s| !s.is_empty());
    let hits = match index().search(&req) {
        Ok(h) => h,
        Err(overseer_index::Error::InvalidArgument(_)) => return,
        Err(e) => panic!("search failed: {e}"),
    };
    assert!(hits.len() <= k, "{} hits for k = {k}", hits.len());
    let mut ids = std::collections::HashSet::new();
    for h in &hits {
        assert!(h.score.is_finite(), "score {}", h.score);
        if !req.chunk_level {
            assert!(ids.insert(h.id.clone()), "document {} twice", h.id);
        }
        let text = &h.passage.text;
        for span in highlight_spans(&query, text) {
            assert!(
                span.start < span.end
                    && span.end <= text.len()
                    && text.is_char_boundary(span.start)
                    && text.is_char_boundary(span.end),
                "bad span {span:?} in {text:?}"
            );
        }
        assert!(serde_json::to_value(h).is_ok());
    }
}
