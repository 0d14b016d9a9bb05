//! The ingest readers (ARD JSONL, markdown, HTML, PDF, text) and the chunker.

use overseer_index::testing::HashEmbedder;
use overseer_index::{ChunkOptions, Embedder, chunk_text, parse_bytes};

/// The readers, by the file name that selects them.
const NAMES: &[&str] = &[
    "ard.jsonl",
    "paper.md",
    "page.html",
    "paper.pdf",
    "notes.txt",
];

/// Fuzz one file through the reader its name selects, then its documents through the
/// chunker.
///
/// Input: the first byte picks the reader (`% 6`; 5: the chunker alone on the raw text)
/// and, in its high bits, the chunk size; the rest is the file. Every document must have
/// text; every chunk must be non-empty, trimmed, equal to the characters of the document
/// at its offsets, and within the token budget unless it is a single word.
pub fn ingest(data: &[u8]) {
    let Some((&sel, file)) = data.split_first() else {
        return;
    };
    let max_tokens = 4 + usize::from(sel >> 3) * 8;
    let opts = ChunkOptions {
        max_tokens,
        overlap_tokens: usize::from(sel >> 5) * 4,
    };
    let texts: Vec<String> = match NAMES.get(usize::from(sel % 6)) {
        Some(name) => parse_bytes(name, file, 1 << 20)
            .into_iter()
            .filter_map(|r| match r {
                Ok((meta, text)) => {
                    assert!(!text.trim().is_empty(), "document without text");
                    assert!(!meta.id.is_empty(), "document without id");
                    Some(text)
                }
                Err(f) => {
                    assert!(!f.reason.is_empty(), "failure without reason");
                    None
                }
            })
            .collect(),
        None => vec![String::from_utf8_lossy(file).into_owned()],
    };
    let embedder = HashEmbedder::new(16);
    for text in texts {
        check_chunks(&text, &embedder, opts);
    }
}

fn check_chunks(text: &str, embedder: &dyn Embedder, opts: ChunkOptions) {
    let chunks = match chunk_text(text, embedder, opts) {
        Ok(c) => c,
        Err(e) => panic!("chunk_text failed: {e}"),
    };
    let chars: Vec<char> = text.chars().collect();
    let max = opts.max_tokens.max(4);
    for c in &chunks {
        assert!(!c.text.is_empty(), "empty chunk");
        assert_eq!(c.text.trim(), c.text, "untrimmed chunk");
        assert!(
            c.start < c.end && c.end <= chars.len(),
            "offsets {}..{}",
            c.start,
            c.end
        );
        let at: String = chars[c.start..c.end].iter().collect();
        assert_eq!(
            at, c.text,
            "chunk text differs from the text at its offsets"
        );
        let single_word = !c.text.contains(char::is_whitespace);
        assert!(
            single_word || embedder.count_tokens(&c.text) <= max,
            "chunk of {} tokens over {max}: {:?}",
            embedder.count_tokens(&c.text),
            c.text
        );
    }
}
