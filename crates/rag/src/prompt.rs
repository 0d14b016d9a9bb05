//! Prompts: the answer prompt per [`Mode`], the follow-up rewrite prompt and the
//! suggested-questions prompt, plus parsing of their outputs. Written for small local
//! models (0.1–0.5B): short instructions, the sources before the question, and the
//! citation rule repeated right before the answer.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::backend::ChatMessage;
use crate::context;
use crate::retrieve::Source;

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
            Mode::Concise => 96,
            Mode::Default => 320,
            Mode::Rookie => 320,
        }
    }

    fn style(self) -> &'static str {
        match self {
            Mode::Default => {
                "Answer in one to three short paragraphs for a researcher. Be precise."
            }
            Mode::Concise => "Answer in one or two sentences only.",
            Mode::Rookie => {
                "The reader is new to AI safety. Avoid jargon (explain any technical term in \
                 plain words), give the intuition first and use a simple everyday example."
            }
        }
    }
}

/// What the assistant says when its sources do not answer the question.
pub const ABSTAIN_ANSWER: &str = "My sources don't answer this question. The indexed \
literature has nothing relevant enough to give a grounded answer; try rephrasing, or ingest \
documents that cover it.";

const SYSTEM: &str = "You are overseer, an assistant that answers questions about AI safety \
and alignment using only the numbered sources you are given. After every sentence that uses \
a source, cite it with its number in square brackets, like [1] or [2, 3]. Only cite sources \
from the list. If the sources do not contain the answer, say \"The sources don't answer \
this.\" Do not make things up.";

/// The chat messages for answering `question` from `sources` (numbered 1..).
/// `history` holds earlier (question, answer) turns of the conversation, oldest first.
pub(crate) fn answer_messages(
    question: &str,
    sources: &[Source],
    mode: Mode,
    history: &[(String, String)],
) -> Vec<ChatMessage> {
    let mut msgs = vec![ChatMessage::system(format!("{SYSTEM} {}", mode.style()))];
    for (q, a) in history {
        msgs.push(ChatMessage::user(q.clone()));
        msgs.push(ChatMessage::assistant(a.clone()));
    }
    let mut user = String::from("Sources:\n\n");
    for (i, s) in sources.iter().enumerate() {
        user.push_str(&context::block(i + 1, s));
        user.push('\n');
    }
    user.push_str(&format!(
        "Question: {question}\n\n{} Cite the sources by number, like [1].",
        mode.style()
    ));
    msgs.push(ChatMessage::user(user));
    msgs
}

/// Token cost of the answer prompt without any sources (system, history, question).
pub(crate) fn overhead_text(question: &str, mode: Mode, history: &[(String, String)]) -> String {
    answer_messages(question, &[], mode, history)
        .into_iter()
        .map(|m| m.content)
        .collect::<Vec<_>>()
        .join("\n")
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

/// Messages asking for follow-up questions about an answer.
pub(crate) fn followup_messages(
    question: &str,
    answer: &str,
    sources: &[Source],
) -> Vec<ChatMessage> {
    let titles: Vec<String> = sources
        .iter()
        .take(5)
        .map(|s| format!("- {}", s.title))
        .collect();
    vec![
        ChatMessage::system(
            "Suggest three short follow-up questions a curious reader might ask next. \
             Write one question per line, each ending with a question mark, and nothing else.",
        ),
        ChatMessage::user(format!(
            "Question: {question}\nAnswer: {}\nRelated documents:\n{}\n\nThree follow-up questions:",
            crate::text::truncate_bytes(answer, 1200),
            titles.join("\n")
        )),
    ]
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
    use crate::context::tests::src;

    #[test]
    fn modes_parse() {
        assert_eq!("Concise".parse::<Mode>().unwrap_or_default(), Mode::Concise);
        assert!("loud".parse::<Mode>().is_err());
    }

    #[test]
    fn answer_prompt_numbers_sources_and_includes_history() {
        let s = vec![
            src("a", "Alpha", "alpha text"),
            src("b", "Beta", "beta text"),
        ];
        let h = vec![("What is X?".to_string(), "X is Y [1].".to_string())];
        let m = answer_messages("And Z?", &s, Mode::Rookie, &h);
        assert_eq!(m.len(), 4);
        let last = &m[3].content;
        assert!(
            last.contains("[1] Alpha") && last.contains("[2] Beta"),
            "{last}"
        );
        assert!(last.find("[2] Beta") < last.find("Question: And Z?"));
        assert!(m[0].content.contains("jargon"));
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
