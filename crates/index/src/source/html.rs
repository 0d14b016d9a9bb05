//! HTML to text: drop scripts, styles and page furniture (nav, header, footer, aside,
//! forms), keep headings as markdown `#` lines so the chunker sees the structure.
//!
//! Hostile nesting: html5ever has no depth limit, and its tree construction costs
//! depth × elements (each start tag scans the stack of open elements). The page is fed to
//! the parser in slices through a tree sink that records each element's depth; past
//! [`MAX_DEPTH`] the page is refused. The walk that turns the tree into text keeps its own
//! stack, so no nesting can overflow the thread's stack.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::tree_builder::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::{Attribute, QualName};
use rustc_hash::FxHashMap;
use scraper::{ElementRef, Html, HtmlTreeSink, Node, Selector};

/// Deepest element nesting accepted. Browsers flatten the tree past 512 levels; real
/// pages stay far below that.
pub(super) const MAX_DEPTH: u32 = 1024;

/// Bytes fed to the parser between two depth checks: bounds the work done past the limit.
const SLICE: usize = 16 << 10;

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
///
/// Errors: a reason, when elements nest deeper than [`MAX_DEPTH`].
pub(super) fn to_text(html: &str) -> Result<(String, String), String> {
    let doc = parse(html)?;
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
    Ok((title, text))
}

/// Parse a document, refusing it as soon as an element sits deeper than [`MAX_DEPTH`].
fn parse(html: &str) -> Result<Html, String> {
    let mut parser = html5ever::driver::parse_document(
        DepthSink {
            inner: HtmlTreeSink::new(Html::new_document()),
            depth: RefCell::default(),
            deepest: Cell::new(0),
        },
        Default::default(),
    );
    let too_deep = || {
        format!(
            "HTML elements nested more than {MAX_DEPTH} levels deep; such a page is refused (save it as text or flatten it)"
        )
    };
    let mut rest = html;
    while !rest.is_empty() {
        let mut end = rest.len().min(SLICE);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (slice, tail) = rest.split_at(end);
        parser.process(StrTendril::from_slice(slice));
        if parser.tokenizer.sink.sink.deepest.get() > MAX_DEPTH {
            return Err(too_deep());
        }
        rest = tail;
    }
    let (doc, deepest) = parser.finish();
    if deepest > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(doc)
}

/// scraper's tree sink, recording the depth at which each node is attached.
///
/// Depths are those at insertion: a subtree moved later (misnested formatting
/// elements) keeps its recorded depth. That bounds the parser's work, which is what the
/// limit is for; the text walk does not depend on it.
struct DepthSink {
    inner: HtmlTreeSink,
    depth: RefCell<FxHashMap<NodeId, u32>>,
    deepest: Cell<u32>,
}

/// The handle type of scraper's sink (ego-tree's node id).
type NodeId = <HtmlTreeSink as TreeSink>::Handle;

impl DepthSink {
    fn depth_of(&self, node: &NodeId) -> u32 {
        self.depth.borrow().get(node).copied().unwrap_or(0)
    }

    fn place(&self, child: &NodeOrText<NodeId>, depth: u32) {
        if let NodeOrText::AppendNode(id) = child {
            self.depth.borrow_mut().insert(*id, depth);
            if depth > self.deepest.get() {
                self.deepest.set(depth);
            }
        }
    }
}

impl TreeSink for DepthSink {
    type Handle = NodeId;
    type Output = (Html, u32);
    type ElemName<'a> = <HtmlTreeSink as TreeSink>::ElemName<'a>;

    fn finish(self) -> (Html, u32) {
        (self.inner.finish(), self.deepest.get())
    }
    fn parse_error(&self, msg: Cow<'static, str>) {
        self.inner.parse_error(msg);
    }
    fn get_document(&self) -> NodeId {
        self.inner.get_document()
    }
    fn elem_name<'a>(&'a self, target: &'a NodeId) -> Self::ElemName<'a> {
        self.inner.elem_name(target)
    }
    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> NodeId {
        self.inner.create_element(name, attrs, flags)
    }
    fn create_comment(&self, text: StrTendril) -> NodeId {
        self.inner.create_comment(text)
    }
    fn create_pi(&self, target: StrTendril, data: StrTendril) -> NodeId {
        self.inner.create_pi(target, data)
    }
    fn append(&self, parent: &NodeId, child: NodeOrText<NodeId>) {
        self.place(&child, self.depth_of(parent).saturating_add(1));
        self.inner.append(parent, child);
    }
    fn append_based_on_parent_node(
        &self,
        element: &NodeId,
        prev_element: &NodeId,
        child: NodeOrText<NodeId>,
    ) {
        let depth = self
            .depth_of(element)
            .max(self.depth_of(prev_element).saturating_add(1));
        self.place(&child, depth);
        self.inner
            .append_based_on_parent_node(element, prev_element, child);
    }
    fn append_doctype_to_document(
        &self,
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    ) {
        self.inner
            .append_doctype_to_document(name, public_id, system_id);
    }
    fn mark_script_already_started(&self, node: &NodeId) {
        self.inner.mark_script_already_started(node);
    }
    fn pop(&self, node: &NodeId) {
        self.inner.pop(node);
    }
    fn get_template_contents(&self, target: &NodeId) -> NodeId {
        self.inner.get_template_contents(target)
    }
    fn same_node(&self, x: &NodeId, y: &NodeId) -> bool {
        self.inner.same_node(x, y)
    }
    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.inner.set_quirks_mode(mode);
    }
    fn append_before_sibling(&self, sibling: &NodeId, new_node: NodeOrText<NodeId>) {
        self.place(&new_node, self.depth_of(sibling));
        self.inner.append_before_sibling(sibling, new_node);
    }
    fn add_attrs_if_missing(&self, target: &NodeId, attrs: Vec<Attribute>) {
        self.inner.add_attrs_if_missing(target, attrs);
    }
    fn remove_from_parent(&self, target: &NodeId) {
        self.inner.remove_from_parent(target);
    }
    fn reparent_children(&self, node: &NodeId, new_parent: &NodeId) {
        self.inner.reparent_children(node, new_parent);
    }
    fn is_mathml_annotation_xml_integration_point(&self, handle: &NodeId) -> bool {
        self.inner
            .is_mathml_annotation_xml_integration_point(handle)
    }
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

/// One step of the text walk: an element to open, a text or line break to emit, or the
/// close of an element opened earlier.
enum Step<'a> {
    Open(ElementRef<'a>),
    Text(&'a str),
    Br,
    Close { block: bool, pre: bool, cell: bool },
}

/// Depth-first walk with an explicit stack (children pushed in reverse).
fn walk(root: ElementRef<'_>, out: &mut Out) {
    let mut stack = vec![Step::Open(root)];
    while let Some(step) = stack.pop() {
        let el = match step {
            Step::Open(el) => el,
            Step::Text(t) => {
                out.push_text(t);
                continue;
            }
            Step::Br => {
                out.line();
                continue;
            }
            Step::Close { block, pre, cell } => {
                if pre {
                    out.pre -= 1;
                }
                if block {
                    out.block();
                } else if cell {
                    out.push_text(" ");
                }
                continue;
            }
        };
        let name = el.value().name();
        if SKIP.contains(&name) || is_boilerplate(&el) {
            continue;
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
            continue;
        }
        let block = BLOCK.contains(&name);
        if block {
            out.block();
        }
        if name == "li" {
            out.text.push_str("- ");
        }
        let pre = name == "pre";
        if pre {
            out.pre += 1;
        }
        stack.push(Step::Close {
            block,
            pre,
            cell: matches!(name, "td" | "th"),
        });
        for child in el.children().rev() {
            match child.value() {
                Node::Text(t) => stack.push(Step::Text(t)),
                Node::Element(e) => {
                    if e.name() == "br" {
                        stack.push(Step::Br);
                    } else if let Some(c) = ElementRef::wrap(child) {
                        stack.push(Step::Open(c));
                    }
                }
                _ => {}
            }
        }
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
        let (title, text) = to_text(html).expect("shallow page");
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
        let (title, text) = to_text(html).expect("shallow page");
        assert_eq!(text, "## In\n\ninside");
        assert_eq!(title, "");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        // 40,000 levels overflowed the stack (and took seconds before that).
        let deep = format!("{}x{}", "<div>".repeat(40_000), "</div>".repeat(40_000));
        let t = std::time::Instant::now();
        let err = to_text(&deep).expect_err("refused");
        assert!(err.contains("nested more than 1024 levels"), "{err}");
        assert!(t.elapsed().as_secs() < 5, "{:?}", t.elapsed());
        // Just under the limit is read; the text walk keeps its own stack.
        let ok = format!("{}deep text{}", "<b>".repeat(1000), "</b>".repeat(1000));
        let (_, text) = to_text(&ok).expect("1000 levels are fine");
        assert_eq!(text, "deep text");
        // Many siblings are not depth.
        let wide = "<p>word</p>".repeat(20_000);
        assert!(to_text(&wide).is_ok());
    }
}
