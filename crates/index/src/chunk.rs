//! Structure-aware chunking: split at markdown headings first, then let
//! `text-splitter` break long sections at paragraphs, then sentences, then words,
//! measuring every chunk with the embedder's own tokenizer so no chunk is silently
//! truncated when embedded. Small neighbouring sections are packed together.
//! Each chunk keeps its heading path and character offsets into the document text.

use text_splitter::{ChunkConfig, ChunkSizer, TextSplitter};

use crate::{Embedder, Error, Result};

/// Chunk size settings, in embedder tokens.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Most tokens per chunk.
    pub max_tokens: usize,
    /// Tokens shared by consecutive chunks of one long section.
    pub overlap_tokens: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            max_tokens: 224,
            overlap_tokens: 32,
        }
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    /// Headings enclosing the chunk, outermost first.
    pub heading_path: Vec<String>,
    /// Character (not byte) offsets of `text` in the document text.
    pub start: usize,
    pub end: usize,
}

struct Sizer<'a>(&'a dyn Embedder);

impl ChunkSizer for Sizer<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.0.count_tokens(chunk)
    }
}

struct Section {
    start: usize,
    end: usize,
    path: Vec<String>,
}

/// Heading level and text of a markdown ATX heading line.
fn heading(line: &str) -> Option<(usize, &str)> {
    let t = line.trim_end();
    let indent = t.len() - t.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let t = &t[indent..];
    let level = t.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &t[level..];
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim();
    (!text.is_empty()).then_some((level, text))
}

fn sections(text: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut cur_start = 0;
    let mut cur_path = Vec::new();
    let mut pos = 0;
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start();
        if l.starts_with("```") || l.starts_with("~~~") {
            in_fence = !in_fence;
        }
        if !in_fence && let Some((level, h)) = heading(line) {
            if pos > cur_start {
                out.push(Section {
                    start: cur_start,
                    end: pos,
                    path: cur_path.clone(),
                });
            }
            stack.retain(|(l, _)| *l < level);
            stack.push((level, h.to_string()));
            cur_path = stack.iter().map(|(_, h)| h.clone()).collect();
            cur_start = pos;
        }
        pos += line.len();
    }
    if pos > cur_start {
        out.push(Section {
            start: cur_start,
            end: pos,
            path: cur_path,
        });
    }
    out
}

/// Greedy word-boundary cut of `piece` into byte ranges of at most `max` tokens.
fn split_words(piece: &str, embedder: &dyn Embedder, max: usize) -> Vec<(usize, usize)> {
    let bounds: Vec<usize> = piece
        .char_indices()
        .filter(|(i, c)| c.is_whitespace() && *i > 0)
        .map(|(i, _)| i)
        .chain(std::iter::once(piece.len()))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut last_ok = None;
    for &b in &bounds {
        if embedder.count_tokens(&piece[start..b]) <= max {
            last_ok = Some(b);
            continue;
        }
        // piece[start..b] is too long: close at the last fitting boundary (or here,
        // for a single word longer than the budget, which the embedder truncates).
        let end = last_ok.unwrap_or(b);
        out.push((start, end));
        start = end;
        last_ok = (embedder.count_tokens(&piece[start..b]) <= max).then_some(b);
    }
    if start < piece.len() && !piece[start..].trim().is_empty() {
        out.push((start, piece.len()));
    }
    out
}

/// Split `text` into chunks of at most `opts.max_tokens` tokens (as counted by `embedder`).
///
/// Errors: `InvalidArgument` when the overlap is not smaller than the chunk size.
pub fn chunk_text(text: &str, embedder: &dyn Embedder, opts: ChunkOptions) -> Result<Vec<Chunk>> {
    let max = opts.max_tokens.max(4);
    let config = ChunkConfig::new(max)
        .with_sizer(Sizer(embedder))
        .with_overlap(opts.overlap_tokens.min(max / 2))
        .map_err(|e| Error::InvalidArgument(format!("chunk overlap: {e}")))?
        .with_trim(true);
    let splitter = TextSplitter::new(config);

    // Byte ranges with their heading path; packed greedily while they fit.
    let mut pieces: Vec<(usize, usize, Vec<String>)> = Vec::new();
    let mut pending: Option<(usize, usize, Vec<String>, usize)> = None; // start, end, path, tokens
    let flush = |p: &mut Option<(usize, usize, Vec<String>, usize)>,
                 out: &mut Vec<(usize, usize, Vec<String>)>| {
        if let Some((s, e, path, _)) = p.take() {
            out.push((s, e, path));
        }
    };
    for sec in sections(text) {
        let body = &text[sec.start..sec.end];
        if body.trim().is_empty() {
            continue;
        }
        let tokens = embedder.count_tokens(body);
        if tokens > max {
            flush(&mut pending, &mut pieces);
            for (off, piece) in splitter.chunk_indices(body) {
                if piece.trim().is_empty() {
                    continue;
                }
                let s = sec.start + off;
                if embedder.count_tokens(piece) <= max {
                    pieces.push((s, s + piece.len(), sec.path.clone()));
                } else {
                    // The splitter's search can overshoot with non-additive token
                    // counts; cut such a piece at word boundaries to stay in budget.
                    for (a, b) in split_words(piece, embedder, max) {
                        pieces.push((s + a, s + b, sec.path.clone()));
                    }
                }
            }
            continue;
        }
        match &mut pending {
            Some((_, end, _, t)) if *t + tokens <= max => {
                *end = sec.end;
                *t += tokens;
            }
            _ => {
                flush(&mut pending, &mut pieces);
                pending = Some((sec.start, sec.end, sec.path, tokens));
            }
        }
    }
    flush(&mut pending, &mut pieces);

    // Byte offsets -> char offsets, walking forward (pieces are nearly sorted).
    let mut chunks = Vec::with_capacity(pieces.len());
    let (mut at_byte, mut at_char) = (0usize, 0usize);
    let mut char_of = |b: usize| -> usize {
        if b < at_byte {
            at_byte = 0;
            at_char = 0;
        }
        at_char += text[at_byte..b].chars().count();
        at_byte = b;
        at_char
    };
    for (s, e, path) in pieces {
        let raw = &text[s..e];
        let lead = raw.len() - raw.trim_start().len();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let bs = s + lead;
        let be = bs + trimmed.len();
        let start = char_of(bs);
        let end = char_of(be);
        chunks.push(Chunk {
            text: trimmed.to_string(),
            heading_path: path,
            start,
            end,
        });
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::HashEmbedder;

    fn opts(max: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions {
            max_tokens: max,
            overlap_tokens: overlap,
        }
    }

    #[test]
    fn offsets_point_at_the_text() {
        let e = HashEmbedder::new(16);
        let text = "Intro para ünïcödé.\n\n# A\n\nAlpha one two.\n\n## B\n\nBeta three four five. Six seven.\n\n# C\n\nGamma.";
        let chunks = chunk_text(text, &e, opts(6, 0)).expect("chunks");
        assert!(chunks.len() >= 3, "{chunks:?}");
        let chars: Vec<char> = text.chars().collect();
        for c in &chunks {
            let slice: String = chars[c.start..c.end].iter().collect();
            assert_eq!(slice, c.text);
            assert!(e.count_tokens(&c.text) <= 6, "{c:?}");
        }
        let beta = chunks
            .iter()
            .find(|c| c.text.contains("Beta"))
            .expect("beta chunk");
        assert_eq!(beta.heading_path, vec!["A".to_string(), "B".to_string()]);
        let gamma = chunks
            .iter()
            .find(|c| c.text.contains("Gamma"))
            .expect("gamma");
        assert_eq!(gamma.heading_path, vec!["C".to_string()]);
    }

    #[test]
    fn small_sections_are_packed_and_long_ones_split_with_overlap() {
        let e = HashEmbedder::new(16);
        let text = "# A\n\nshort.\n\n# B\n\nalso short.";
        let chunks = chunk_text(text, &e, opts(50, 5)).expect("chunks");
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, text);

        let long: String = (0..200)
            .map(|i| format!("Sentence number {i} is here. "))
            .collect();
        let chunks = chunk_text(&long, &e, opts(40, 10)).expect("chunks");
        assert!(chunks.len() > 10);
        for w in chunks.windows(2) {
            assert!(
                w[1].start < w[0].end,
                "consecutive chunks overlap: {:?}",
                (w[0].end, w[1].start)
            );
            assert!(w[1].start > w[0].start);
        }
        assert!(chunks.iter().all(|c| e.count_tokens(&c.text) <= 40));
        assert_eq!(
            chunks.last().map(|c| c.end),
            Some(long.trim_end().chars().count())
        );
    }

    #[test]
    fn headings_in_code_fences_are_ignored() {
        let e = HashEmbedder::new(16);
        let text = "# Real\n\n```\n# not a heading\n```\n\nbody";
        let s = sections(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].path, vec!["Real".to_string()]);
        assert!(
            chunk_text("   \n\n ", &e, opts(10, 2))
                .expect("empty")
                .is_empty()
        );
    }
}
