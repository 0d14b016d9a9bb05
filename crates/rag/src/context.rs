//! Context assembly: turn ranked passages into the numbered source list the model sees,
//! within a token budget. One passage per document (the best-ranked one), best first;
//! the last source that does not fit whole is cut at a char boundary if enough room
//! remains to be useful, and its char offsets are narrowed to match.

use crate::retrieve::Source;

/// Fewest tokens worth spending on a truncated passage.
const MIN_PARTIAL_TOKENS: usize = 48;

/// `Author`, `A and B`, `A, B, C`, `A et al.`.
fn authors(list: &[String]) -> String {
    match list {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b}, {c}"),
        [a, ..] => format!("{a} et al."),
    }
}

/// The header line of source `n`: `[n] Title — Authors (2020-03-30)`.
pub(crate) fn header(n: usize, s: &Source) -> String {
    let mut h = format!("[{n}] {}", s.title.trim());
    let a = authors(&s.authors);
    if !a.is_empty() {
        h.push_str(" — ");
        h.push_str(&a);
    }
    if let Some(d) = s.date.as_deref().filter(|d| !d.is_empty()) {
        h.push_str(&format!(" ({})", d.get(..10).unwrap_or(d)));
    }
    h
}

/// One source block as it appears in the prompt.
pub(crate) fn block(n: usize, s: &Source) -> String {
    format!("{}\n{}\n", header(n, s), s.passage.trim())
}

/// Choose and number sources: best first, one per document, at most `max_sources`,
/// their blocks totalling at most `budget` tokens as measured by `count`.
/// Source `i` of the result is cited as `[i + 1]`.
pub(crate) fn assemble(
    hits: &[Source],
    budget: usize,
    max_sources: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::new();
    let mut used = 0;
    for hit in hits {
        if out.len() >= max_sources {
            break;
        }
        if out.iter().any(|s| s.id == hit.id) || hit.passage.trim().is_empty() {
            continue;
        }
        let n = out.len() + 1;
        let cost = count(&block(n, hit));
        if used + cost <= budget {
            used += cost;
            out.push(hit.clone());
            continue;
        }
        let room = budget.saturating_sub(used);
        if room >= MIN_PARTIAL_TOKENS
            && let Some(cut) = truncate_to_fit(n, hit, room, count)
        {
            out.push(cut);
        }
        break;
    }
    out
}

/// The longest char prefix of the passage whose block fits `room` tokens (binary
/// search on the char count), or `None` if not even a sliver fits.
fn truncate_to_fit(
    n: usize,
    hit: &Source,
    room: usize,
    count: &dyn Fn(&str) -> usize,
) -> Option<Source> {
    let chars: Vec<(usize, char)> = hit.passage.char_indices().collect();
    let (mut lo, mut hi) = (0usize, chars.len());
    let with = |k: usize| {
        let end = chars.get(k).map_or(hit.passage.len(), |&(b, _)| b);
        let mut s = hit.clone();
        s.passage = format!("{}…", &hit.passage[..end]);
        s.passage_end = hit.passage_start + k;
        s
    };
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if count(&block(n, &with(mid))) <= room {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo >= 40).then(|| with(lo))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn src(id: &str, title: &str, passage: &str) -> Source {
        Source {
            id: id.into(),
            title: title.into(),
            authors: vec!["Ada".into(), "Bob".into()],
            date: Some("2020-03-30T00:00:00Z".into()),
            url: format!("https://example.org/{id}"),
            source: "test".into(),
            score: 1.0,
            passage: passage.into(),
            passage_start: 100,
            passage_end: 100 + passage.chars().count(),
        }
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn header_formats_authors_and_date() {
        let s = src("a", "Title", "p");
        assert_eq!(header(3, &s), "[3] Title — Ada and Bob (2020-03-30)");
        let mut t = s.clone();
        t.authors = vec!["A".into(), "B".into(), "C".into(), "D".into()];
        t.date = None;
        assert_eq!(header(1, &t), "[1] Title — A et al.");
    }

    #[test]
    fn dedups_by_document_and_keeps_rank_order() {
        let hits = vec![
            src("a", "A", "alpha one"),
            src("b", "B", "beta"),
            src("a", "A", "alpha two"),
            src("c", "C", "gamma"),
        ];
        let got = assemble(&hits, 1000, 10, &words);
        let ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(got[0].passage, "alpha one");
        assert_eq!(assemble(&hits, 1000, 2, &words).len(), 2);
    }

    #[test]
    fn stays_within_budget_and_truncates_last_source() {
        let long = "word ".repeat(200);
        let hits = vec![
            src("a", "A", &"x ".repeat(30)),
            src("b", "B", &long),
            src("c", "C", "c"),
        ];
        let budget = 150;
        let got = assemble(&hits, budget, 10, &words);
        let total: usize = got
            .iter()
            .enumerate()
            .map(|(i, s)| words(&block(i + 1, s)))
            .sum();
        assert!(total <= budget, "{total} > {budget}");
        assert_eq!(got.len(), 2, "the truncated source ends the list");
        let cut = &got[1];
        assert!(cut.passage.ends_with('…'));
        assert!(cut.passage_end < hits[1].passage_end);
        assert_eq!(
            cut.passage_end - cut.passage_start,
            cut.passage.chars().count() - 1
        );
        // Too small for anything: nothing rather than a sliver.
        assert!(assemble(&hits, 10, 10, &words).is_empty());
    }
}
