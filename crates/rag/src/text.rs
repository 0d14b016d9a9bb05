//! Small text utilities shared by citation parsing, grounding and context assembly:
//! sentence splitting with byte spans, content-word extraction for lexical overlap,
//! and char-boundary-safe truncation.

use std::collections::HashSet;

/// A sentence of a text: its byte range and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sentence<'a> {
    pub start: usize,
    pub end: usize,
    pub text: &'a str,
}

/// Split `text` into sentences. A sentence ends after `.`, `!`, `?` or a newline when
/// followed by whitespace (and, for `.`, not inside a citation bracket or a decimal
/// number), or after a trailing citation group that follows such punctuation, so
/// "X is Y. [1] Z." keeps "[1]" with the first sentence. Empty pieces are dropped.
pub(crate) fn sentences(text: &str) -> Vec<Sentence<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut depth = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'[' => depth += 1,
            b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        let boundary = depth == 0
            && (b == b'\n'
                || (matches!(b, b'.' | b'!' | b'?')
                    && bytes.get(i + 1).is_none_or(|c| c.is_ascii_whitespace())));
        if boundary {
            let mut end = i + 1;
            // Absorb citation groups right after the punctuation: "... end. [2]".
            let mut j = end;
            loop {
                let mut k = j;
                while k < bytes.len() && bytes[k] == b' ' {
                    k += 1;
                }
                if k < bytes.len()
                    && bytes[k] == b'['
                    && let Some(close) = text[k..].find(']')
                {
                    let inner = &text[k + 1..k + close];
                    if !inner.is_empty()
                        && inner
                            .chars()
                            .all(|c| c.is_ascii_digit() || ", -–".contains(c))
                    {
                        j = k + close + 1;
                        end = j;
                        continue;
                    }
                }
                break;
            }
            push(text, start, end, &mut out);
            start = end;
            i = end;
            continue;
        }
        i += 1;
    }
    push(text, start, text.len(), &mut out);
    out
}

fn push<'a>(text: &'a str, start: usize, end: usize, out: &mut Vec<Sentence<'a>>) {
    let piece = &text[start..end];
    let trimmed = piece.trim();
    if trimmed.is_empty() {
        return;
    }
    let lead = piece.len() - piece.trim_start().len();
    let s = start + lead;
    out.push(Sentence {
        start: s,
        end: s + trimmed.len(),
        text: trimmed,
    });
}

const STOPWORDS: &[&str] = &[
    "the",
    "and",
    "for",
    "are",
    "but",
    "not",
    "you",
    "all",
    "any",
    "can",
    "had",
    "her",
    "was",
    "one",
    "our",
    "out",
    "has",
    "have",
    "him",
    "his",
    "how",
    "its",
    "may",
    "who",
    "did",
    "get",
    "this",
    "that",
    "with",
    "from",
    "they",
    "them",
    "then",
    "than",
    "there",
    "their",
    "these",
    "those",
    "what",
    "when",
    "where",
    "which",
    "while",
    "will",
    "would",
    "could",
    "should",
    "been",
    "being",
    "into",
    "onto",
    "about",
    "also",
    "such",
    "some",
    "more",
    "most",
    "other",
    "only",
    "very",
    "just",
    "does",
    "doing",
    "each",
    "because",
    "between",
    "both",
    "same",
    "over",
    "under",
    "again",
    "further",
    "once",
    "here",
    "why",
    "own",
    "too",
    "can't",
    "it's",
    "is",
    "it",
    "of",
    "to",
    "in",
    "on",
    "as",
    "at",
    "be",
    "by",
    "or",
    "an",
    "a",
    "if",
    "so",
    "we",
    "do",
    "no",
    "up",
    "i",
    "my",
    "me",
    "he",
    "she",
    "source",
    "sources",
    "according",
    "like",
    "use",
    "used",
    "using",
    "way",
    "make",
    "makes",
    "made",
    "well",
    "much",
    "many",
];

/// Lower-cased content words of `text` (alphanumeric runs of 3+ chars, stopwords and
/// citation numbers removed, a plural `s` stripped) as a set.
pub(crate) fn content_words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3 && !w.chars().all(|c| c.is_ascii_digit()))
        .map(|w| {
            let w = w.to_lowercase();
            match w.strip_suffix('s') {
                Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_string(),
                _ => w,
            }
        })
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Share of `claim`'s content words that appear in `evidence` (0 when the claim has none).
pub(crate) fn lexical_overlap(claim: &HashSet<String>, evidence: &HashSet<String>) -> f32 {
    if claim.is_empty() {
        return 0.0;
    }
    let hit = claim.iter().filter(|w| evidence.contains(*w)).count();
    hit as f32 / claim.len() as f32
}

/// Dot product (cosine similarity of two L2-normalised embeddings).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The longest prefix of `s` with at most `max_bytes` bytes ending on a char boundary.
pub(crate) fn truncate_bytes(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_and_keeps_trailing_citations() {
        let t = "Gradient hacking is X [1]. It matters. [2, 3] Also 3.5 is a number!\nNew line";
        let s: Vec<&str> = sentences(t).iter().map(|s| s.text).collect();
        assert_eq!(
            s,
            vec![
                "Gradient hacking is X [1].",
                "It matters. [2, 3]",
                "Also 3.5 is a number!",
                "New line"
            ]
        );
        for sent in sentences(t) {
            assert_eq!(&t[sent.start..sent.end], sent.text);
        }
    }

    #[test]
    fn content_words_drop_stopwords_and_plurals() {
        let w = content_words("The models are deceptive; models hide goals [1].");
        assert!(w.contains("model"));
        assert!(w.contains("deceptive"));
        assert!(w.contains("goal"));
        assert!(!w.contains("the"));
        assert!(!w.contains("1"));
        let e = content_words("a deceptive model with hidden goals");
        let o = lexical_overlap(&w, &e);
        // claim {model, deceptive, hide, goal}: three of four appear
        assert!((o - 0.75).abs() < 1e-6, "{o}");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_bytes("héllo", 2), "h");
        assert_eq!(truncate_bytes("abc", 10), "abc");
    }
}
