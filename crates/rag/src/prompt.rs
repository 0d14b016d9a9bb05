//! Prompts: the answer prompt per [`Mode`], the follow-up rewrite prompt and the
//! suggested-questions prompt, plus parsing of their outputs. Written for small local
//! models (0.1–0.5B): short instructions, the sources before the question, and the
//! citation rule repeated right before the answer.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::ChatMessage;
use crate::evidence::Evidence;

/// Answer style, after the AI Safety Chatbot's modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A few well-cited paragraphs.
    #[default]
    Default,
    /// One or two sentences.
    Concise,
    /// For newcomers: no jargon, intuition and examples.
    Rookie,
}

impl FromStr for Mode {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "default" | "" => Ok(Mode::Default),
            "concise" => Ok(Mode::Concise),
            "rookie" => Ok(Mode::Rookie),
            other => Err(crate::Error::InvalidArgument(format!(
                "unknown mode '{other}' (default, concise, rookie)"
            ))),
        }
    }
}

impl Mode {
    /// Tokens to allow for the answer.
    pub(crate) fn max_tokens(self) -> usize {
        match self {
            Mode::Concise => 80,
            Mode::Default => 220,
            Mode::Rookie => 240,
        }
    }

    /// Tokens the answer runs at least before the model may end it. Small models told
    /// to write four to six sentences often stop after one; a floor of about three
    /// sentences makes them cover more of the evidence (unsupported sentences are
    /// still dropped by the citation step).
    pub(crate) fn min_tokens(self) -> usize {
        match self {
            Mode::Concise => 0,
            Mode::Default | Mode::Rookie => MIN_ANSWER_TOKENS,
        }
    }

    fn style(self) -> &'static str {
        match self {
            Mode::Default => {
                "Answer in four to six sentences for a researcher. Be precise and specific."
            }
            Mode::Concise => "Answer in one or two sentences only.",
            Mode::Rookie => {
                "The reader is new to AI safety. Avoid jargon (explain any technical term in \
                 plain words), give the intuition first and use a simple everyday example."
            }
        }
    }
}

/// See [`Mode::min_tokens`].
const MIN_ANSWER_TOKENS: usize = 72;

/// What the assistant says when its sources do not answer the question.
pub const ABSTAIN_ANSWER: &str = "My sources don't answer this question. The indexed \
literature has nothing relevant enough to give a grounded answer; try rephrasing, or ingest \
documents that cover it.";

/// The label that opens the extractive fallback.
pub const FALLBACK_LABEL: &str = "What the sources say:";

/// No instruction to refuse: whether the evidence answers the question is decided
/// before generation (relevance, specific terms) and after it (grounding), and small
/// models told they may refuse do so on questions their notes answer.
const SYSTEM: &str = "You are overseer, an assistant for AI safety researchers. You answer \
questions using only the numbered notes you are given. Write the answer in your own words: \
explain and connect the ideas, do not copy the notes and do not list them or their titles.";

/// The notes block: each evidence item's sentences after its number.
pub(crate) fn notes(evidence: &[Evidence]) -> String {
    let mut out = String::new();
    for (i, e) in evidence.iter().enumerate() {
        out.push_str(&format!("[{}] {}\n", i + 1, e.text()));
    }
    out
}

fn question_turn(notes: &str, question: &str, mode: Mode) -> String {
    format!(
        "Notes:\n{notes}\nQuestion: {question}\n{} Use your own words.",
        mode.style()
    )
}

/// The chat messages for answering `question` from `evidence` (numbered 1..).
/// `history` holds earlier (question, answer) turns of the conversation, oldest first.
/// The system turn comes first and never changes, so a backend can keep its KV cache
/// across questions.
pub(crate) fn answer_messages(
    question: &str,
    evidence: &[Evidence],
    mode: Mode,
    history: &[(String, String)],
) -> Vec<ChatMessage> {
    let mut msgs = vec![ChatMessage::system(SYSTEM)];
    for (q, a) in history {
        msgs.push(ChatMessage::user(q.clone()));
        msgs.push(ChatMessage::assistant(a.clone()));
    }
    msgs.push(ChatMessage::user(question_turn(
        &notes(evidence),
        question,
        mode,
    )));
    msgs
}

/// Messages asking the model to turn a follow-up into a standalone question.
pub(crate) fn rewrite_messages(question: &str, history: &[(String, String)]) -> Vec<ChatMessage> {
    let mut convo = String::new();
    for (q, a) in history {
        convo.push_str(&format!(
            "User: {q}\nAssistant: {}\n",
            crate::text::truncate_bytes(a, 600)
        ));
    }
    vec![
        ChatMessage::system(
            "Rewrite the user's last question so it can be understood without the \
             conversation: replace pronouns like \"it\" or \"that\" with what they refer to. \
             Reply with the rewritten question only.",
        ),
        ChatMessage::user(format!(
            "Conversation:\n{convo}\nLast question: {question}\n\nStandalone question:"
        )),
    ]
}

/// The first plausible question in a rewrite reply, or `None` if it is unusable.
pub(crate) fn parse_rewrite(reply: &str) -> Option<String> {
    let line = reply
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())?
        .trim_start_matches("Standalone question:")
        .trim()
        .trim_matches('"')
        .trim();
    (line.len() >= 8 && line.len() <= 400).then(|| line.to_string())
}

/// The follow-up request, asked after the answer in the answer's own conversation.
const FOLLOWUP_ASK: &str = "Suggest three short follow-up questions that the notes above \
answer and I did not ask yet. Write one question per line, each ending with a question mark, \
and nothing else.";

/// Messages asking for follow-up questions that the evidence itself answers: the
/// answer's conversation (`answer_messages`, then the model's `reply`) continued with
/// [`FOLLOWUP_ASK`], so a backend that keeps KV caches feeds only that request.
pub(crate) fn followup_messages(answer_messages: &[ChatMessage], reply: &str) -> Vec<ChatMessage> {
    let mut msgs = answer_messages.to_vec();
    msgs.push(ChatMessage::assistant(reply));
    msgs.push(ChatMessage::user(FOLLOWUP_ASK));
    msgs
}

/// Up to three distinct questions from a follow-up reply: lines ending in `?`, list
/// markers stripped, the original question and near-duplicates dropped.
pub(crate) fn parse_followups(reply: &str, question: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in reply.lines() {
        let l = line
            .trim()
            .trim_start_matches(|c: char| c.is_ascii_digit() || "-*•.) ".contains(c))
            .trim();
        if !l.ends_with('?')
            || l.len() < 10
            || l.len() > 200
            || !crate::citations::parse(l).is_empty()
        {
            continue;
        }
        let key = l.to_lowercase();
        if key == question.trim().to_lowercase() || out.iter().any(|o| o.to_lowercase() == key) {
            continue;
        }
        out.push(l.to_string());
        if out.len() == 3 {
            break;
        }
    }
    out
}

/// Whether a generated answer is itself an admission that the sources do not answer.
pub(crate) fn is_refusal(answer: &str) -> bool {
    let a = answer.to_lowercase();
    let head = crate::text::truncate_bytes(&a, 200);
    [
        "sources don't answer",
        "sources do not answer",
        "sources don't contain",
        "sources do not contain",
        "sources don't provide",
        "sources do not provide",
        "sources don't mention",
        "sources do not mention",
    ]
    .iter()
    .any(|p| head.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieve::tests::src;

    #[test]
    fn modes_parse() {
        assert_eq!("Concise".parse::<Mode>().unwrap_or_default(), Mode::Concise);
        assert!("loud".parse::<Mode>().is_err());
    }

    #[test]
    fn answer_prompt_numbers_evidence_and_includes_history() {
        let ev = |id: &str, t: &str| Evidence {
            source: src(id, "Title", t),
            sentences: vec![t.to_string()],
            scores: vec![1.0],
            vectors: Vec::new(),
        };
        let e = vec![ev("a", "alpha text"), ev("b", "beta text")];
        let h = vec![("What is X?".to_string(), "X is Y [1].".to_string())];
        let m = answer_messages("And Z?", &e, Mode::Rookie, &h);
        // system, history pair, question.
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].content, "What is X?");
        let last = &m[3].content;
        assert!(last.contains("[1] alpha text\n[2] beta text"), "{last}");
        assert!(!last.contains("Title"), "no source headers: {last}");
        assert!(last.find("[2] beta") < last.find("Question: And Z?"));
        assert!(last.contains("jargon"));
        // The fixed prefix does not depend on the question.
        let other = answer_messages("Why?", &e, Mode::Default, &[]);
        assert_eq!(m[..1], other[..1]);
    }

    #[test]
    fn followups_are_parsed_and_deduplicated() {
        let reply = "1. What is inner alignment?\n- What is inner alignment?\nSure!\n\
                     2) How does RLHF work?\n* Why? \n3. Is deception likely [2]?\n\
                     4. What is a mesa-optimizer?\n5. Extra question here?";
        assert_eq!(
            parse_followups(reply, "how does rlhf work?"),
            vec![
                "What is inner alignment?",
                "What is a mesa-optimizer?",
                "Extra question here?"
            ]
        );
    }

    #[test]
    fn rewrite_takes_first_line() {
        assert_eq!(
            parse_rewrite("\n\"What is gradient hacking?\"\nbla"),
            Some("What is gradient hacking?".into())
        );
        assert_eq!(parse_rewrite("  "), None);
    }

    #[test]
    fn refusals_are_detected() {
        assert!(is_refusal("The sources don't answer this."));
        assert!(!is_refusal("Gradient hacking is when a model [1]..."));
    }
}
