//! HTML to text: drop scripts, styles and page furniture (nav, header, footer, aside,
//! forms), keep headings as markdown `#` lines so the chunker sees the structure.

use scraper::{ElementRef, Html, Node, Selector};

/// Elements whose content is never document text.
const SKIP: &[&str] = &[
    "script", "style", "noscript", "nav", "header", "footer", "aside", "form", "svg", "iframe",
    "template", "button", "select", "head", "menu", "dialog",
];
/// Class/id words that mark boilerplate blocks.
const BOILERPLATE: &[&str] = &[
    "nav",
    "navbar",
    "navigation",
    "menu",
    "sidebar",
    "footer",
    "header",
    "cookie",
    "cookies",
    "banner",
    "breadcrumb",
    "breadcrumbs",
    "share",
    "social",
    "advert",
    "ads",
    "skip-link",
];
const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "ul",
    "ol",
    "li",
    "table",
    "tr",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
    "body",
    "hr",
    "address",
    "details",
    "summary",
];

/// Convert an HTML page to `(title, text)`.
pub(super) fn to_text(html: &str) -> (String, String) {
    let doc = Html::parse_document(html);
    let title = Selector::parse("title")
        .ok()
        .and_then(|s| doc.select(&s).next())
        .map(|t| collapse(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    // Prefer the main content when the page marks it.
    let root = ["main", "article", "[role=main]", "body"]
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .find_map(|s| doc.select(&s).next())
        .unwrap_or_else(|| doc.root_element());
    let mut out = Out::default();
    walk(root, &mut out);
    let text = out.finish();
    let title = title
        .or_else(|| {
            text.lines()
                .find_map(|l| l.strip_prefix("# ").map(|t| t.trim().to_string()))
        })
        .unwrap_or_default();
    (title, text)
}

#[derive(Default)]
struct Out {
    text: String,
    /// Inside <pre>: whitespace is kept.
    pre: usize,
}

impl Out {
    fn block(&mut self) {
        let trimmed = self.text.trim_end_matches([' ', '\t']).len();
        self.text.truncate(trimmed);
        if self.text.is_empty() || self.text.ends_with("\n\n") {
            return;
        }
        if self.text.ends_with('\n') {
            self.text.push('\n');
        } else {
            self.text.push_str("\n\n");
        }
    }

    fn line(&mut self) {
        let trimmed = self.text.trim_end_matches([' ', '\t']).len();
        self.text.truncate(trimmed);
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.text.push('\n');
        }
    }

    fn push_text(&mut self, s: &str) {
        if self.pre > 0 {
            self.text.push_str(s);
            return;
        }
        for (i, word) in s.split_whitespace().enumerate() {
            let at_line_start = self.text.is_empty() || self.text.ends_with('\n');
            let needs_space = !at_line_start
                && !self.text.ends_with(' ')
                && (i > 0 || s.starts_with(char::is_whitespace));
            if needs_space {
                self.text.push(' ');
            }
            self.text.push_str(word);
        }
        if s.ends_with(char::is_whitespace)
            && !self.text.is_empty()
            && !self.text.ends_with(['\n', ' '])
        {
            self.text.push(' ');
        }
    }

    fn finish(self) -> String {
        self.text
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_string()
    }
}

fn is_boilerplate(el: &ElementRef<'_>) -> bool {
    let v = el.value();
    if v.attr("role")
        .is_some_and(|r| r == "navigation" || r == "banner" || r == "contentinfo")
    {
        return true;
    }
    if v.attr("aria-hidden") == Some("true") || v.attr("hidden").is_some() {
        return true;
    }
    let words = v
        .attr("class")
        .unwrap_or("")
        .split_whitespace()
        .chain(v.attr("id"));
    for w in words {
        let w = w.to_ascii_lowercase();
        if BOILERPLATE.contains(&w.as_str()) {
            return true;
        }
    }
    false
}

fn walk(el: ElementRef<'_>, out: &mut Out) {
    let name = el.value().name();
    if SKIP.contains(&name) || is_boilerplate(&el) {
        return;
    }
    let heading = match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    };
    if let Some(level) = heading {
        let t = collapse(&el.text().collect::<String>());
        if !t.is_empty() {
            out.block();
            out.text.push_str(&"#".repeat(level));
            out.text.push(' ');
            out.text.push_str(&t);
            out.block();
        }
        return;
    }
    let block = BLOCK.contains(&name);
    if block {
        out.block();
    }
    if name == "li" {
        out.text.push_str("- ");
    }
    if name == "pre" {
        out.pre += 1;
    }
    for child in el.children() {
        match child.value() {
            Node::Text(t) => out.push_text(t),
            Node::Element(e) => {
                if e.name() == "br" {
                    out.line();
                } else if let Some(c) = ElementRef::wrap(child) {
                    walk(c, out);
                }
            }
            _ => {}
        }
    }
    if name == "pre" {
        out.pre -= 1;
    }
    if block {
        out.block();
    } else if matches!(name, "td" | "th") {
        out.push_text(" ");
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_boilerplate_keeps_headings() {
        let html = r#"<html><head><title>Page T</title><style>p{color:red}</style>
<script>var x = "SECRET";</script></head><body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<div class="sidebar">Sidebar junk</div>
<h1>Main  heading</h1>
<p>First <b>bold</b> paragraph
 spanning lines.</p>
<h2>Sub</h2><ul><li>one</li><li>two</li></ul>
<footer>Copyright</footer></body></html>"#;
        let (title, text) = to_text(html);
        assert_eq!(title, "Page T");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("Home"), "{text}");
        assert!(!text.contains("Sidebar"), "{text}");
        assert!(!text.contains("Copyright"), "{text}");
        assert!(!text.contains("color"), "{text}");
        assert!(
            text.contains("# Main heading\n\nFirst bold paragraph spanning lines."),
            "{text}"
        );
        assert!(text.contains("## Sub\n\n- one\n\n- two"), "{text}");
    }

    #[test]
    fn main_element_wins() {
        let html = "<body><div>outside</div><main><h2>In</h2><p>inside</p></main></body>";
        let (title, text) = to_text(html);
        assert_eq!(text, "## In\n\ninside");
        assert_eq!(title, "");
    }
}
