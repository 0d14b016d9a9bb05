//! The topics a digest is organised by: the research agenda's 18 challenges built in
//! (Anwar, Krueger et al., 2024, "Foundational Challenges in Assuring Alignment and
//! Safety of Large Language Models"), or a user's own file in the same schema.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The built-in taxonomy: `crates/rag/data/agenda_topics.json` (ids and titles are the
/// paper's section numbers and titles; descriptions and examples were written for this
/// project).
const AGENDA: &str = include_str!("../../data/agenda_topics.json");

/// The id items that fit no topic are filed under.
pub const OTHER: &str = "other";

/// One topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    /// Short stable id (the agenda's section number, e.g. `3.4`).
    pub id: String,
    /// Group the topic belongs to (the agenda's three categories); may be empty.
    #[serde(default)]
    pub category: String,
    pub title: String,
    /// What belongs here, in a sentence or two: the classifier reads it.
    pub description: String,
    /// Optional example titles or one-line abstracts of work that belongs here; the
    /// classifier reads them beside the description.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

/// An ordered list of topics with unique ids.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Taxonomy {
    pub topics: Vec<Topic>,
}

impl Taxonomy {
    /// The agenda's 18 challenges.
    pub fn agenda() -> Taxonomy {
        // The built-in file is checked by a unit test; a failure here is a build defect.
        Self::parse(AGENDA, "built-in agenda").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Read a taxonomy file: a JSON list of topics (`id`, `title`, `description`,
    /// optional `category` and `examples`).
    ///
    /// Errors: `Taxonomy` naming the file and line of the problem; I/O as `Taxonomy`.
    pub fn load(path: &Path) -> Result<Taxonomy> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Taxonomy {
            path: path.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse a taxonomy from JSON text; `origin` names it in errors.
    ///
    /// Errors: `Taxonomy` with the line of the problem (1-based; 0 when not tied to one).
    pub fn parse(text: &str, origin: &str) -> Result<Taxonomy> {
        let err = |line: usize, reason: String| Error::Taxonomy {
            path: origin.to_string(),
            line,
            reason,
        };
        let topics: Vec<Topic> =
            serde_json::from_str(text).map_err(|e| err(e.line(), e.to_string()))?;
        if topics.is_empty() {
            return Err(err(1, "the taxonomy lists no topics".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in topics.iter().enumerate() {
            let line = line_of_topic(text, i);
            if t.id.trim().is_empty() {
                return Err(err(line, format!("topic {} has an empty id", i + 1)));
            }
            if t.id.eq_ignore_ascii_case(OTHER) {
                return Err(err(line, format!("the id `{OTHER}` is reserved")));
            }
            if !seen.insert(t.id.as_str()) {
                return Err(err(line, format!("topic id `{}` appears twice", t.id)));
            }
            if t.title.trim().is_empty() || t.description.trim().is_empty() {
                return Err(err(
                    line,
                    format!("topic `{}` needs a title and a description", t.id),
                ));
            }
        }
        Ok(Taxonomy { topics })
    }

    /// The topic with this id.
    pub fn get(&self, id: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.id == id)
    }
}

/// The line where the `i`-th topic's `"id"` key is written (0 if not found).
fn line_of_topic(text: &str, i: usize) -> usize {
    let mut nth = 0;
    for (ln, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(p) = rest.find("\"id\"") {
            if nth == i {
                return ln + 1;
            }
            nth += 1;
            rest = &rest[p + 4..];
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agenda_has_eighteen_topics_in_three_categories() {
        let t = Taxonomy::agenda();
        assert_eq!(t.topics.len(), 18);
        let cats: std::collections::BTreeSet<_> = t.topics.iter().map(|t| &t.category).collect();
        assert_eq!(cats.len(), 3);
        assert!(
            t.get("3.4")
                .is_some_and(|t| t.title.contains("interpreting"))
        );
    }

    #[test]
    fn malformed_files_name_the_line() {
        let text = "[\n {\"id\": \"a\", \"title\": \"A\", \"description\": \"d\"},\n {\"id\": \"b\", \"title\": \"B\"}\n]";
        let e = Taxonomy::parse(text, "t.json").unwrap_err().to_string();
        assert!(e.contains("t.json:3"), "{e}");
        assert!(e.contains("description"), "{e}");
        let dup = "[\n{\"id\": \"a\", \"title\": \"A\", \"description\": \"d\"},\n{\"id\": \"a\", \"title\": \"B\", \"description\": \"d\"}\n]";
        let e = Taxonomy::parse(dup, "t.json").unwrap_err().to_string();
        assert!(e.contains("t.json:3") && e.contains("twice"), "{e}");
        let e = Taxonomy::parse("[\n{\"id\": \"a\",,}]", "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.json:2"), "{e}");
        assert!(Taxonomy::parse("[]", "t.json").is_err());
        let other = "[{\"id\": \"Other\", \"title\": \"A\", \"description\": \"d\"}]";
        assert!(Taxonomy::parse(other, "t.json").is_err());
    }
}
