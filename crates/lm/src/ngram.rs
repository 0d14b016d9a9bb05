//! N-gram blocking at decode time, two rules:
//!
//! - **copy blocking** (words): no `n` consecutive words that also occur in a reference
//!   (the evidence an answer is written from), after transformers'
//!   `encoder_no_repeat_ngram_size` but on words rather than tokens. When the last
//!   `n - 1` words of the text are a run of the reference, a token that would start the
//!   word the reference continues with is refused, so the model must say it another
//!   way. Checking words, not token ids, matters: blocking a token lets a model spell
//!   the same word with another split ("bas" + "elines"), or misspell it to get past.
//! - **loop blocking** (words): no run of `n` words the generation itself already
//!   produced (transformers' `no_repeat_ngram_size`, on words for the same reason),
//!   which stops the degenerate loops small models fall into.

use std::collections::{HashMap, HashSet};

/// Which n-grams decoding must not produce. `Default` blocks nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NgramBlock {
    /// Length in words of a blocked copy from the reference (0: no copy blocking).
    copy_n: usize,
    /// The reference's `(copy_n - 1)`-word runs (lower case), each with the words
    /// that followed it there.
    copy: HashMap<Vec<String>, HashSet<String>>,
    /// Length in words of a blocked self-repeat (0: no loop blocking).
    repeat_n: usize,
}

/// Lower-cased words: runs of alphanumeric characters.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl NgramBlock {
    /// Block every run of `n` words found in one of `references` (runs do not span two
    /// references). `n < 2` blocks nothing: a single word is not a copy.
    pub fn copies<S: AsRef<str>>(n: usize, references: &[S]) -> Self {
        let mut copy: HashMap<Vec<String>, HashSet<String>> = HashMap::new();
        if n >= 2 {
            for r in references {
                let w: Vec<String> = words(r.as_ref()).collect();
                for g in w.windows(n) {
                    copy.entry(g[..n - 1].to_vec())
                        .or_default()
                        .insert(g[n - 1].clone());
                }
            }
        }
        Self {
            copy_n: if copy.is_empty() { 0 } else { n },
            copy,
            repeat_n: 0,
        }
    }

    /// Also block repeating any run of `n` words the generation already produced
    /// (`n < 2`: no loop blocking).
    pub fn with_repeats(mut self, n: usize) -> Self {
        self.repeat_n = if n >= 2 { n } else { 0 };
        self
    }

    /// Whether this blocks anything at all.
    pub fn is_empty(&self) -> bool {
        self.copy_n == 0 && self.repeat_n == 0
    }

    /// Whether a token with text `piece` may not follow `text` (the text generated so
    /// far): it would start the word that continues a run of `n - 1` words copied from
    /// a reference, or repeated from `text` itself.
    pub fn refuses(&self, text: &str, piece: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let Some(start) = new_word(text, piece) else {
            return false;
        };
        let continues = |next: &str| next.starts_with(&start) || start.starts_with(next);
        if self.copy_n > 0
            && let Some(last) = last_words(text, self.copy_n - 1)
            && self
                .copy
                .get(&last)
                .is_some_and(|next| next.iter().any(|w| continues(w)))
        {
            return true;
        }
        let n = self.repeat_n;
        if n > 0 {
            let all: Vec<String> = words(text).collect();
            if all.len() >= n {
                let tail = &all[all.len() - (n - 1)..];
                return all
                    .windows(n)
                    .any(|w| &w[..n - 1] == tail && continues(&w[n - 1]));
            }
        }
        false
    }
}

/// The lower-cased start of the word `piece` begins, if it begins a new word after
/// `text` (its first alphanumeric char does not continue a word of `text`).
fn new_word(text: &str, piece: &str) -> Option<String> {
    let at = piece.find(char::is_alphanumeric)?;
    if at == 0 && text.chars().last().is_some_and(char::is_alphanumeric) {
        return None;
    }
    Some(
        piece[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect(),
    )
}

/// The last `k` words of `text`, if it has that many.
fn last_words(text: &str, k: usize) -> Option<Vec<String>> {
    // Only the tail can matter.
    let from = text
        .char_indices()
        .rev()
        .nth((k + 1) * 40)
        .map_or(0, |(i, _)| i);
    let mut last: Vec<String> = words(&text[from..]).collect();
    if last.len() < k {
        return None;
    }
    last.drain(..last.len() - k);
    Some(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_run_cannot_continue_with_the_reference_word() {
        let b = NgramBlock::copies(4, &["The agent was trained by gradient descent."]);
        let t = "Here the agent was trained";
        assert!(b.refuses(t, " by"), "the 4th word of a copy");
        assert!(b.refuses(t, " b"), "a prefix of it");
        assert!(!b.refuses(t, " with"), "another word is fine");
        assert!(
            !b.refuses("Here an agent was", " trained"),
            "three copied words are fine"
        );
        assert!(
            !b.refuses(t, "ly"),
            "continuing the current word is not a new word"
        );
        assert!(!b.refuses(t, ","), "punctuation is not a word");
        assert!(
            b.refuses("the AGENT, was trained ", "by"),
            "case and punctuation ignored"
        );
        assert!(!NgramBlock::default().refuses(t, " by"));
    }

    #[test]
    fn runs_do_not_span_references() {
        let b = NgramBlock::copies(3, &["alpha beta", "gamma delta"]);
        assert!(!b.refuses("alpha beta", " gamma"));
        assert!(b.is_empty(), "no 3-word run in either reference");
    }

    #[test]
    fn repeats_are_blocked() {
        let b = NgramBlock::default().with_repeats(3);
        let t = "by Paul Christiano in 2018, by Paul";
        assert!(b.refuses(t, " Christiano"));
        assert!(b.refuses(t, " Chris"));
        assert!(!b.refuses(t, " and"));
        assert!(!b.refuses("by Paul", " Christiano"), "nothing repeated yet");
        assert!(!NgramBlock::default().refuses(t, " Christiano"));
    }
}
