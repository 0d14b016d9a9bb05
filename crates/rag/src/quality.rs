//! What a reader would judge in an answer, as numbers: how much of it is pasted from
//! its sources ([`copy_ratio`]), whether it is junk ([`junk`]: our source-header format
//! pasted, a loop, or too short to be an answer) and how many of a question's key
//! points it makes ([`key_point_recall`]). The pipeline uses the first two to decide
//! when a generated answer must give way to the labelled extractive fallback; the
//! answer evaluation (`overseer eval answers`) reports all three.

use std::collections::{HashMap, HashSet};

/// A copied run this many words long or longer counts as pasted.
pub const COPY_RUN_WORDS: usize = 12;

/// Fewer words than this is not an answer.
pub const MIN_ANSWER_WORDS: usize = 10;

/// Lower-cased words (alphanumeric runs) of `text`, citation numbers dropped.
pub fn words(text: &str) -> Vec<String> {
    let stripped = strip_citations(text);
    stripped
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// `text` without its citation groups (`[1]`, `[2, 3]`).
pub fn strip_citations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in crate::citations::parse(text) {
        out.push_str(&text[last..m.start]);
        last = m.end;
    }
    out.push_str(&text[last..]);
    out
}

/// Share of `answer`'s words inside runs of at least `COPY_RUN_WORDS` words found
/// verbatim (case-insensitive, punctuation ignored) in one of `passages`. 0 for an
/// empty answer.
pub fn copy_ratio(answer: &str, passages: &[&str]) -> f64 {
    copy_ratio_n(answer, passages, COPY_RUN_WORDS)
}

/// [`copy_ratio`] with another run length.
pub fn copy_ratio_n(answer: &str, passages: &[&str], n: usize) -> f64 {
    let a = words(answer);
    if a.is_empty() || n == 0 {
        return 0.0;
    }
    let mut grams: HashSet<&[String]> = HashSet::new();
    let pw: Vec<Vec<String>> = passages.iter().map(|p| words(p)).collect();
    for p in &pw {
        for w in p.windows(n) {
            grams.insert(w);
        }
    }
    let mut covered = vec![false; a.len()];
    for (i, w) in a.windows(n).enumerate() {
        if grams.contains(w) {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    covered.iter().filter(|&&c| c).count() as f64 / a.len() as f64
}

/// Why an answer is junk, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Junk {
    /// It reproduces our source list format: `[n] Title — Authors (date)` lines or a
    /// run of numbered titles.
    SourceHeaders,
    /// A 4-word sequence repeated 4 or more times.
    Loop,
    /// Under [`MIN_ANSWER_WORDS`] words.
    TooShort,
}

/// Whether `answer` is junk rather than an answer, and why.
pub fn junk(answer: &str) -> Option<Junk> {
    if has_source_headers(answer) {
        return Some(Junk::SourceHeaders);
    }
    let w = words(answer);
    if has_loop(&w) {
        return Some(Junk::Loop);
    }
    if w.len() < MIN_ANSWER_WORDS {
        return Some(Junk::TooShort);
    }
    None
}

/// A 4-word sequence occurring 4+ times.
fn has_loop(w: &[String]) -> bool {
    let mut counts: HashMap<&[String], usize> = HashMap::new();
    for g in w.windows(4) {
        let c = counts.entry(g).or_default();
        *c += 1;
        if *c >= 4 {
            return true;
        }
    }
    false
}

/// `[n] Something — Someone (2019…)` on a line, `[n] Title (2019-01-01)`, or three
/// citation groups each directly followed by a capitalised title-like run.
fn has_source_headers(answer: &str) -> bool {
    let marks = crate::citations::parse(answer);
    let mut title_marks = 0;
    for m in &marks {
        let after = &answer[m.end..];
        let line = after.lines().next().unwrap_or("");
        let rest = line.trim_start();
        // "[1] Title — Author (2019-01-01)" or "[1] Title (2019)".
        if rest.contains(" — ") || has_date_paren(line) {
            return true;
        }
        let opens = m.start == 0 || answer[..m.start].ends_with([' ', '\n']);
        if opens && rest.chars().next().is_some_and(char::is_uppercase) && m.end < answer.len() {
            title_marks += 1;
        }
    }
    // A list of titles: several groups that each open a capitalised run and the text
    // is mostly those groups.
    title_marks >= 3 && marks.len() * 12 >= words(answer).len()
}

/// `(2019-01-01)` or `(2019)` somewhere in `line`.
fn has_date_paren(line: &str) -> bool {
    let b = line.as_bytes();
    for (i, _) in line.match_indices('(') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 4 {
            let after = b.get(i + 5).copied();
            if after == Some(b')') || after == Some(b'-') {
                return true;
            }
        }
    }
    false
}

/// Share of `key_points` (each a list of alternative phrases) with at least one phrase
/// found in `answer`, case-insensitive. `None` without key points.
pub fn key_point_recall(answer: &str, key_points: &[Vec<String>]) -> Option<f64> {
    if key_points.is_empty() {
        return None;
    }
    let a = answer.to_lowercase();
    let hit = key_points
        .iter()
        .filter(|alts| {
            alts.iter()
                .any(|p| !p.is_empty() && a.contains(&p.to_lowercase()))
        })
        .count();
    Some(hit as f64 / key_points.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSAGE: &str = "This post calls attention to the problem of gradient hacking, where a \
        powerful agent being trained by gradient descent could structure its parameters so \
        as to influence its own training.";

    #[test]
    fn copy_ratio_counts_long_verbatim_runs_only() {
        let pasted = "This post calls attention to the problem of gradient hacking, where a \
                      powerful agent being trained [1].";
        assert!(copy_ratio(pasted, &[PASSAGE]) > 0.99);
        let own = "Gradient hacking means a model shapes its own training signal to protect \
                   its goals, which could lock in a misaligned objective.";
        assert_eq!(copy_ratio(own, &[PASSAGE]), 0.0);
        let mixed = format!("{own} {pasted}");
        let r = copy_ratio(&mixed, &[PASSAGE]);
        assert!(r > 0.3 && r < 0.7, "{r}");
        assert_eq!(copy_ratio("", &[PASSAGE]), 0.0);
    }

    #[test]
    fn junk_is_found() {
        assert_eq!(
            junk("[1] Gradient hacking — Evan Hubinger (2019-01-01)\nThis post calls attention"),
            Some(Junk::SourceHeaders)
        );
        assert_eq!(
            junk(
                "[1] Embedded Agency [2] Risks from Learned Optimization [3] Iterated Amplification"
            ),
            Some(Junk::SourceHeaders)
        );
        assert_eq!(
            junk(&"by Paul Christiano 2018 ".repeat(5)),
            Some(Junk::Loop)
        );
        assert_eq!(junk("It is gradient hacking [1]."), Some(Junk::TooShort));
        assert_eq!(
            junk(
                "Gradient hacking is when a model influences its own training to keep its \
                 goals [1]. That could hide misalignment from overseers [2]."
            ),
            None
        );
    }

    #[test]
    fn key_points_are_alternatives() {
        let kp = vec![
            vec!["own training".to_string(), "gradient".to_string()],
            vec!["deceptive".to_string()],
        ];
        assert_eq!(key_point_recall("It shapes its Gradients.", &kp), Some(0.5));
        assert_eq!(key_point_recall("x", &[]), None);
    }
}
