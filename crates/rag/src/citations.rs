//! Citation markers in generated answers: `[1]`, `[2, 5]`, `[1][3]`, `[1-3]`, `[1; 4]`.
//! Small models cite sloppily, so parsing is lenient about separators and strict about
//! what counts as a number, and [`clean`] removes numbers that name no source so every
//! marker left in the answer resolves to a listed source.

/// The most numbers one range like `[1-40]` may expand to; longer ranges are treated
/// as text, not citations (no source list is that long).
const MAX_RANGE: u32 = 20;

/// One bracketed citation group in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitationMark {
    /// Byte offset of `[`.
    pub start: usize,
    /// Byte offset just past `]`.
    pub end: usize,
    /// The cited numbers in order of appearance, without duplicates.
    pub numbers: Vec<u32>,
}

/// Every citation group in `text`. A group is `[` + numbers separated by `,`, `;` or
/// spaces, or ranges `a-b` / `a–b` (a ≤ b, at most 20 long) + `]`. Anything else in
/// brackets (`[sic]`, `[a]`, `[]`) is not a citation.
pub fn parse(text: &str) -> Vec<CitationMark> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(rel) = text[search..].find('[') {
        let start = search + rel;
        let Some(close_rel) = text[start + 1..].find([']', '[']) else {
            break;
        };
        let close = start + 1 + close_rel;
        if text.as_bytes()[close] == b'[' {
            search = close;
            continue;
        }
        if let Some(numbers) = parse_inner(&text[start + 1..close]) {
            out.push(CitationMark {
                start,
                end: close + 1,
                numbers,
            });
        }
        search = close + 1;
    }
    out
}

fn parse_inner(inner: &str) -> Option<Vec<u32>> {
    let inner = inner.trim();
    if inner.is_empty() || inner.len() > 64 {
        return None;
    }
    let mut numbers: Vec<u32> = Vec::new();
    for part in inner.split([',', ';']) {
        for item in part.split_whitespace() {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let range = item.split_once('-').or_else(|| item.split_once('–'));
            let nums: Vec<u32> = match range {
                Some((a, b)) => {
                    let a: u32 = a.trim().parse().ok()?;
                    let b: u32 = b.trim().parse().ok()?;
                    if a > b || b - a >= MAX_RANGE {
                        return None;
                    }
                    (a..=b).collect()
                }
                None => vec![item.parse().ok()?],
            };
            for n in nums {
                if !numbers.contains(&n) {
                    numbers.push(n);
                }
            }
        }
    }
    (!numbers.is_empty()).then_some(numbers)
}

/// The result of [`clean`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// The text with every citation group rewritten to its valid numbers
    /// (`[2, 9]` → `[2]` when only 1..=5 exist) and groups without any removed.
    pub text: String,
    /// Numbers cited that name no source, in order of first appearance.
    pub invalid: Vec<u32>,
    /// Valid numbers cited, in order of first appearance.
    pub cited: Vec<u32>,
    /// Total citation numbers in the original text (valid or not, with repeats).
    pub total_marks: usize,
    /// Citation numbers naming no source (with repeats).
    pub invalid_marks: usize,
}

/// Keep only citations to sources `1..=n_sources`; see [`Cleaned`].
pub fn clean(text: &str, n_sources: usize) -> Cleaned {
    let marks = parse(text);
    let mut out = String::with_capacity(text.len());
    let mut invalid = Vec::new();
    let mut cited = Vec::new();
    let mut total_marks = 0;
    let mut invalid_marks = 0;
    let mut last = 0;
    for m in &marks {
        total_marks += m.numbers.len();
        let valid: Vec<u32> = m
            .numbers
            .iter()
            .copied()
            .filter(|&n| n >= 1 && (n as usize) <= n_sources)
            .collect();
        invalid_marks += m.numbers.len() - valid.len();
        for &n in &m.numbers {
            let list = if valid.contains(&n) {
                &mut cited
            } else {
                &mut invalid
            };
            if !list.contains(&n) {
                list.push(n);
            }
        }
        let mut before = &text[last..m.start];
        if valid.is_empty() {
            // Drop the group and the space that introduced it.
            before = before.strip_suffix(' ').unwrap_or(before);
            out.push_str(before);
        } else {
            out.push_str(before);
            out.push_str(&format_group(&valid));
        }
        last = m.end;
    }
    out.push_str(&text[last..]);
    Cleaned {
        text: if marks.is_empty() {
            out
        } else {
            out.trim().to_string()
        },
        invalid,
        cited,
        total_marks,
        invalid_marks,
    }
}

/// `[1]`, `[2, 5]`.
pub fn format_group(numbers: &[u32]) -> String {
    let parts: Vec<String> = numbers.iter().map(u32::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nums(text: &str) -> Vec<Vec<u32>> {
        parse(text).into_iter().map(|m| m.numbers).collect()
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(nums("a [1] b"), vec![vec![1]]);
        assert_eq!(nums("a [2, 5] b"), vec![vec![2, 5]]);
        assert_eq!(nums("a [2,5]"), vec![vec![2, 5]]);
        assert_eq!(nums("x [1][3]."), vec![vec![1], vec![3]]);
        assert_eq!(nums("x [1-3]"), vec![vec![1, 2, 3]]);
        assert_eq!(nums("x [2–4; 7]"), vec![vec![2, 3, 4, 7]]);
        assert_eq!(nums("x [1, 1, 2]"), vec![vec![1, 2]]);
    }

    #[test]
    fn rejects_non_citations() {
        assert!(nums("[sic] [a] [] [1a] [3-1] [1-100] [ ]").is_empty());
        assert!(nums("unclosed [1").is_empty());
        assert_eq!(nums("nested [[2]]"), vec![vec![2]]);
        assert!(nums("[99999999999999]").is_empty());
    }

    #[test]
    fn spans_point_at_the_brackets() {
        let t = "Mesa-optimizers [1, 2] exist.";
        let m = &parse(t)[0];
        assert_eq!(&t[m.start..m.end], "[1, 2]");
    }

    #[test]
    fn clean_drops_numbers_without_sources() {
        let c = clean("A is B [1, 9]. C is D [7]. E [2][1].", 3);
        assert_eq!(c.text, "A is B [1]. C is D. E [2][1].");
        assert_eq!(c.invalid, vec![9, 7]);
        assert_eq!(c.cited, vec![1, 2]);
        assert_eq!(c.total_marks, 5);
        assert_eq!(c.invalid_marks, 2);
        let z = clean("zero [0]", 3);
        assert_eq!(z.text, "zero");
        assert_eq!(z.invalid, vec![0]);
    }

    #[test]
    fn every_remaining_mark_is_valid() {
        let c = clean("[4] x [1-5] y [2; 3] z [6]", 3);
        for m in parse(&c.text) {
            assert!(
                m.numbers.iter().all(|&n| (1..=3).contains(&n)),
                "{}",
                c.text
            );
        }
        assert_eq!(c.text, "x [1, 2, 3] y [2, 3] z");
    }
}
