//! Answerability beyond similarity. A question about a thing the corpus does not hold
//! ("What did the Bletchley Declaration of 2023 commit countries to?") still retrieves
//! passages about nearby things (AI governance, summits, declarations) with high
//! similarity, and a small model then answers from them with confidence. What tells
//! the two apart is whether the question's *specific* terms — names, acronyms,
//! numbers, years, quoted phrases — occur in the evidence at all. A question whose
//! specific term appears nowhere in what was retrieved cannot be answered from it.

use std::collections::HashSet;

/// Question words that may start a question capitalised without naming anything.
const OPENERS: &[&str] = &[
    "what",
    "how",
    "why",
    "who",
    "whom",
    "whose",
    "when",
    "where",
    "which",
    "is",
    "are",
    "was",
    "were",
    "can",
    "could",
    "does",
    "do",
    "did",
    "should",
    "would",
    "will",
    "explain",
    "describe",
    "tell",
    "give",
    "summarize",
    "summarise",
    "compare",
    "in",
    "according",
    "list",
    "name",
    "has",
    "have",
    "if",
    "please",
    "i",
    "on",
    "for",
];

/// One specific term of a question: its words as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term(pub Vec<String>);

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// Normalise a word for matching: lower case, possessive and plural `s` dropped.
fn norm(w: &str) -> String {
    let w = w.to_lowercase();
    let w = w
        .strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .unwrap_or(&w)
        .to_string();
    match w.strip_suffix('s') {
        Some(stem)
            if stem.len() >= 3 && !stem.ends_with('s') && !stem.ends_with(char::is_numeric) =>
        {
            stem.to_string()
        }
        _ => w,
    }
}

/// Words of a text for matching: runs of letters, digits, `-` and `.` inside a word.
fn split_words(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'' || c == '’' || c == '.'))
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .collect()
}

fn is_specific(word: &str, first: bool) -> bool {
    let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
    if word.chars().any(|c| c.is_ascii_digit()) {
        return true;
    }
    if letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase()) {
        return true;
    }
    let capital = word.chars().next().is_some_and(char::is_uppercase);
    capital && !(first && OPENERS.contains(&word.to_lowercase().as_str())) && word.len() != 1
}

/// The specific terms of `question`: runs of capitalised words (not a capitalised
/// question word at the start), acronyms, words with digits, and quoted phrases.
pub fn specific_terms(question: &str) -> Vec<Term> {
    let mut terms: Vec<Term> = Vec::new();
    // Quoted phrases first.
    let mut in_quote = false;
    let mut cur = String::new();
    for c in question.chars() {
        if matches!(c, '"' | '“' | '”') {
            if in_quote && !cur.trim().is_empty() {
                let words: Vec<String> = split_words(&cur).into_iter().map(String::from).collect();
                if !words.is_empty() && words.len() <= 6 {
                    terms.push(Term(words));
                }
            }
            cur.clear();
            in_quote = !in_quote;
        } else if in_quote {
            cur.push(c);
        }
    }
    // Capitalised runs, acronyms and numbers; a sentence start only counts when it is
    // not a question word.
    for sentence in question.split(['?', '!', ';', ':']) {
        let mut run: Vec<String> = Vec::new();
        for (i, w) in split_words(sentence).into_iter().enumerate() {
            if is_specific(w, i == 0) {
                run.push(w.to_string());
            } else if !run.is_empty() {
                // "of", "the" inside a name ("Bank of England") continue a run only
                // if a capitalised word follows; keep it simple: end the run.
                terms.push(Term(std::mem::take(&mut run)));
            }
        }
        if !run.is_empty() {
            terms.push(Term(run));
        }
    }
    let mut seen = HashSet::new();
    terms.retain(|t| seen.insert(t.0.iter().map(|w| norm(w)).collect::<Vec<_>>()));
    terms
}

/// The terms of `question` found in none of `texts`. A term is found when each of its
/// words occurs in one text (words compared case-insensitively, plural and
/// possessive `s` ignored; a word with digits must match exactly).
pub fn missing_terms(question: &str, texts: &[&str]) -> Vec<Term> {
    let terms = specific_terms(question);
    if terms.is_empty() {
        return Vec::new();
    }
    let vocab: Vec<HashSet<String>> = texts
        .iter()
        .map(|t| {
            let mut v: HashSet<String> = HashSet::new();
            for w in split_words(t) {
                v.insert(norm(w));
                // "GPT-4-based" holds "gpt-4"; "debate." holds "debate".
                for part in w.split(['-', '.']) {
                    if !part.is_empty() {
                        v.insert(norm(part));
                    }
                }
            }
            v
        })
        .collect();
    terms
        .into_iter()
        .filter(|t| {
            !vocab
                .iter()
                .any(|v| t.0.iter().all(|w| v.contains(&norm(w))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(q: &str) -> Vec<String> {
        specific_terms(q).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn finds_names_numbers_acronyms_and_quotes() {
        assert_eq!(
            names(
                "What did the Bletchley Declaration of the 2023 AI Safety Summit commit countries to?"
            ),
            vec!["Bletchley Declaration", "2023 AI Safety Summit"]
        );
        assert_eq!(names("What is gradient hacking?"), Vec::<String>::new());
        assert_eq!(names("How did GPT-4 score on MMLU?"), vec!["GPT-4", "MMLU"]);
        assert_eq!(
            names("Which of the topics is explained in the Embedded Agency sequence?"),
            vec!["Embedded Agency"]
        );
        assert_eq!(
            names("What is \"the treacherous turn\"?"),
            vec!["the treacherous turn"]
        );
        assert_eq!(
            names("Anthropic's constitution: what is it?"),
            vec!["Anthropic's"]
        );
    }

    #[test]
    fn missing_terms_are_those_no_text_holds() {
        let texts = [
            "The Embedded Agency sequence by Demski and Garrabrant discusses agents.",
            "GPT-3 is a large language model trained in 2020.",
        ];
        let miss = |q: &str| -> Vec<String> {
            missing_terms(q, &texts)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(miss("What does the Embedded Agency sequence explain?").is_empty());
        assert!(miss("When was GPT-3 trained?").is_empty());
        assert_eq!(miss("How did GPT-4 score on MMLU?"), vec!["GPT-4", "MMLU"]);
        assert_eq!(miss("What did the 2023 summit decide?"), vec!["2023"]);
        assert!(
            miss("What is an embedded agent?").is_empty(),
            "no specific terms"
        );
        // Possessives and plurals still match.
        assert!(miss("What are Demski's views?").is_empty());
    }
}
