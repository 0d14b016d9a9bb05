//! A digest as Markdown, standalone HTML (inline CSS, no scripts: readable in an email
//! client), JSON, or an Atom feed with one entry per item.

use std::fmt::Write as _;

use crate::digest::{Digest, DigestItem};
use crate::{Error, Result};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
    Json,
    Atom,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "md" | "markdown" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            "json" => Ok(Format::Json),
            "atom" => Ok(Format::Atom),
            _ => Err(Error::InvalidArgument(format!(
                "format must be md, html, json or atom, not `{s}`"
            ))),
        }
    }
}

/// Render `d` in `format`.
pub fn render(d: &Digest, format: Format) -> String {
    match format {
        Format::Markdown => markdown(d),
        Format::Html => html(d),
        Format::Json => serde_json::to_string_pretty(d).unwrap_or_default(),
        Format::Atom => atom(d),
    }
}

fn byline(it: &DigestItem) -> String {
    let mut parts = Vec::new();
    if !it.authors.is_empty() {
        let mut a = it
            .authors
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if it.authors.len() > 3 {
            a.push_str(" et al.");
        }
        parts.push(a);
    }
    if let Some(d) = it.date.as_deref().filter(|d| !d.is_empty()) {
        parts.push(d.get(..10).unwrap_or(d).to_string());
    }
    parts.push(it.source.clone());
    parts.join(" · ")
}

fn confidence_note(it: &DigestItem) -> String {
    let mut s = format!("confidence {:.2}", it.confidence);
    if it.uncertain {
        s.push_str(", uncertain");
    }
    if !it.secondary.is_empty() {
        s.push_str(&format!("; also {}", it.secondary.join(", ")));
    }
    s
}

/// Markdown-escape the few characters that would break a link text or emphasis.
fn md_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('[', "\\[")
        .replace(']', "\\]")
        .replace('*', "\\*")
        .replace('_', "\\_")
        .replace('<', "&lt;")
        .replace('\n', " ")
}

fn md_url(u: &str) -> Option<String> {
    let u = u.trim();
    (u.starts_with("http://") || u.starts_with("https://")).then(|| {
        u.replace(' ', "%20")
            .replace('(', "%28")
            .replace(')', "%29")
    })
}

fn markdown(d: &Digest) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}\n", md_text(&d.title));
    let _ = writeln!(
        o,
        "{} items, {}; made {}.\n",
        d.items.len(),
        d.covers,
        d.created
    );
    if d.items.is_empty() {
        let _ = writeln!(o, "Nothing new: no indexed item matches this selection.");
        return o;
    }
    if !d.highlights.is_empty() {
        let _ = writeln!(o, "## Highlights\n");
        for &n in &d.highlights {
            let Some(it) = d.item(n) else { continue };
            let _ = writeln!(
                o,
                "- **[{n}] {}** — {}",
                md_text(&it.title),
                md_text(it.highlight.as_deref().unwrap_or(""))
            );
        }
        o.push('\n');
    }
    for s in &d.sections {
        let head = if s.id == crate::digest::OTHER {
            "Other".to_string()
        } else {
            format!("{} {}", s.id, s.title)
        };
        let _ = writeln!(o, "## {}\n", md_text(&head));
        for &n in &s.items {
            let Some(it) = d.item(n) else { continue };
            let title = match it.url.as_deref().and_then(md_url) {
                Some(u) => format!("[{}]({u})", md_text(&it.title)),
                None => md_text(&it.title),
            };
            let star = if it.highlight.is_some() { " ★" } else { "" };
            let _ = writeln!(o, "- **[{n}] {title}**{star}  ");
            let _ = writeln!(o, "  {} — {}  ", md_text(&byline(it)), confidence_note(it));
            if let Some(sum) = &it.summary {
                let _ = writeln!(
                    o,
                    "  {}",
                    md_text(sum).replace("\\[", "[").replace("\\]", "]")
                );
            }
            o.push('\n');
        }
    }
    if let Some(m) = &d.summarizer {
        let _ = writeln!(
            o,
            "---\nSummaries written by {} from each item's own text; each sentence cites its item and was checked against it.",
            md_text(m)
        );
    }
    o
}

/// Escape text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

fn safe_href(u: &str) -> Option<String> {
    let u = u.trim();
    (u.starts_with("http://") || u.starts_with("https://")).then(|| esc(u))
}

const CSS: &str = "body{font-family:Georgia,serif;max-width:720px;margin:24px auto;padding:0 16px;color:#1d1d1f;line-height:1.5}\
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}\
.meta{color:#666;font-size:13px}.item{margin:14px 0}.title{font-weight:bold}.hl{background:#fff8e1;padding:8px 12px;border-left:3px solid #f0b400}\
.unc{color:#a15c00}a{color:#0b57d0}";

fn html(d: &Digest) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>\n",
        esc(&d.title)
    );
    let _ = writeln!(o, "<h1>{}</h1>", esc(&d.title));
    let _ = writeln!(
        o,
        "<p class=\"meta\">{} items, {}; made {}.</p>",
        d.items.len(),
        esc(&d.covers),
        esc(&d.created)
    );
    if d.items.is_empty() {
        let _ = writeln!(
            o,
            "<p>Nothing new: no indexed item matches this selection.</p>"
        );
    }
    if !d.highlights.is_empty() {
        let _ = writeln!(o, "<h2>Highlights</h2>");
        for &n in &d.highlights {
            let Some(it) = d.item(n) else { continue };
            let _ = writeln!(
                o,
                "<p class=\"hl\"><span class=\"title\">[{n}] {}</span><br><span class=\"meta\">{}</span></p>",
                esc(&it.title),
                esc(it.highlight.as_deref().unwrap_or(""))
            );
        }
    }
    for s in &d.sections {
        let head = if s.id == crate::digest::OTHER {
            "Other".to_string()
        } else {
            format!("{} {}", s.id, s.title)
        };
        let _ = writeln!(o, "<h2 id=\"topic-{}\">{}</h2>", esc(&s.id), esc(&head));
        for &n in &s.items {
            let Some(it) = d.item(n) else { continue };
            let title = match it.url.as_deref().and_then(safe_href) {
                Some(h) => format!("<a href=\"{h}\">{}</a>", esc(&it.title)),
                None => esc(&it.title),
            };
            let star = if it.highlight.is_some() { " ★" } else { "" };
            let unc = if it.uncertain { " class=\"unc\"" } else { "" };
            let _ = writeln!(
                o,
                "<div class=\"item\" id=\"item-{n}\"><div class=\"title\">[{n}] {title}{star}</div><div class=\"meta\">{} — <span{unc}>{}</span></div>",
                esc(&byline(it)),
                esc(&confidence_note(it))
            );
            if let Some(sum) = &it.summary {
                let _ = writeln!(o, "<p>{}</p>", esc(sum));
            }
            let _ = writeln!(o, "</div>");
        }
    }
    if let Some(m) = &d.summarizer {
        let _ = writeln!(
            o,
            "<p class=\"meta\">Summaries written by {} from each item's own text; each sentence cites its item and was checked against it.</p>",
            esc(m)
        );
    }
    o.push_str("</body></html>\n");
    o
}

/// An RFC 3339 time for an item: its date at midnight UTC, else the digest's time.
fn atom_time(date: Option<&str>, fallback: &str) -> String {
    date.and_then(crate::digest::build::parse_date)
        .map_or_else(|| fallback.to_string(), |d| format!("{d}T00:00:00Z"))
}

fn atom(d: &Digest) -> String {
    let mut o = String::new();
    o.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n");
    let _ = writeln!(o, "  <title>{}</title>", esc(&d.title));
    let _ = writeln!(o, "  <subtitle>{}</subtitle>", esc(&d.covers));
    let _ = writeln!(o, "  <id>urn:overseer:digest:{}</id>", esc(&d.id));
    let _ = writeln!(o, "  <updated>{}</updated>", esc(&d.created));
    let _ = writeln!(o, "  <generator>overseer</generator>");
    for it in &d.items {
        o.push_str("  <entry>\n");
        let _ = writeln!(o, "    <title>{}</title>", esc(&it.title));
        let _ = writeln!(o, "    <id>urn:overseer:item:{}</id>", esc(&it.id));
        let _ = writeln!(
            o,
            "    <updated>{}</updated>",
            esc(&atom_time(it.date.as_deref(), &d.created))
        );
        if let Some(h) = it.url.as_deref().and_then(safe_href) {
            let _ = writeln!(o, "    <link href=\"{h}\"/>");
        }
        for a in &it.authors {
            let _ = writeln!(o, "    <author><name>{}</name></author>", esc(a));
        }
        if it.authors.is_empty() {
            let _ = writeln!(o, "    <author><name>{}</name></author>", esc(&it.source));
        }
        let _ = writeln!(o, "    <category term=\"{}\"/>", esc(&it.topic));
        if let Some(s) = &it.summary {
            let _ = writeln!(o, "    <summary>{}</summary>", esc(s));
        }
        o.push_str("  </entry>\n");
    }
    o.push_str("</feed>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{DigestStats, Section};

    fn digest() -> Digest {
        let it = DigestItem {
            id: "doc1".into(),
            n: 1,
            title: "Attack <script>alert(1)</script> & more".into(),
            authors: vec!["A. Author".into()],
            date: Some("2020-01-02T00:00:00Z".into()),
            url: Some("javascript:alert(1)".into()),
            source: "papers".into(),
            topic: "3.5".into(),
            secondary: vec![],
            confidence: 0.9,
            uncertain: false,
            relevance: 0.5,
            novelty: Some(0.3),
            score: 0.6,
            summary: Some("It shows an attack [1]".into()),
            summary_fallback: false,
            copy_ratio: Some(0.0),
            highlight: Some("best".into()),
        };
        Digest {
            id: "x".into(),
            title: "Digest".into(),
            created: "2020-01-08T00:00:00Z".into(),
            covers: "all".into(),
            items: vec![it],
            sections: vec![Section {
                id: "3.5".into(),
                title: "Jailbreaks".into(),
                category: String::new(),
                items: vec![1],
            }],
            highlights: vec![1],
            stats: DigestStats::default(),
            summarizer: Some("m".into()),
        }
    }

    #[test]
    fn html_has_no_script_and_no_unsafe_link() {
        let h = render(&digest(), Format::Html);
        assert!(!h.to_lowercase().contains("<script"));
        assert!(!h.contains("javascript:"));
        assert!(h.contains("&lt;script&gt;"));
        assert!(h.contains("It shows an attack [1]"));
        // Every element opened is closed, in a whole document.
        for tag in [
            "html", "head", "body", "div", "p", "h1", "h2", "span", "style", "title",
        ] {
            let open =
                h.matches(&format!("<{tag}>")).count() + h.matches(&format!("<{tag} ")).count();
            assert_eq!(open, h.matches(&format!("</{tag}>")).count(), "<{tag}>");
        }
        assert!(h.starts_with("<!DOCTYPE html>") && h.trim_end().ends_with("</html>"));
    }

    #[test]
    fn atom_is_escaped_and_dated() {
        let a = render(&digest(), Format::Atom);
        assert!(a.contains("<updated>2020-01-02T00:00:00Z</updated>"));
        assert!(a.contains("&lt;script&gt;"));
        assert!(a.contains("<category term=\"3.5\"/>"));
    }

    #[test]
    fn markdown_cites_and_says_when_empty() {
        let m = render(&digest(), Format::Markdown);
        assert!(m.contains("## 3.5 Jailbreaks"));
        assert!(m.contains("It shows an attack [1]"));
        let mut e = digest();
        e.items.clear();
        e.sections.clear();
        e.highlights.clear();
        assert!(render(&e, Format::Markdown).contains("Nothing new"));
        assert!(render(&e, Format::Html).contains("Nothing new"));
    }
}
