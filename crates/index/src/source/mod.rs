//! Readers that turn input paths into documents: Alignment Research Dataset JSONL,
//! folders of markdown, HTML, PDF and plain text. They never fail the whole run for
//! one bad record: each problem becomes a [`Failure`] and reading goes on.

mod html;
mod pdf;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Metadata of one document (everything but its text).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocMeta {
    /// Document id: the ARD `id` for JSONL input, the canonical path for files.
    pub id: String,
    pub title: String,
    pub authors: Vec<String>,
    /// Publication date as given (ISO 8601 for ARD).
    pub date: Option<String>,
    pub url: Option<String>,
    /// Collection name: the ARD `source`, or the folder/file name for files.
    pub source: String,
    pub source_type: Option<String>,
    pub tags: Vec<String>,
    /// Every other field of the input record, kept as is.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// A document read from a source, ready for chunking.
#[derive(Debug, Clone)]
pub(crate) struct SourceDoc {
    pub meta: DocMeta,
    pub text: String,
    /// Canonical path of the ingest argument it came from (the unit of `--prune`).
    pub origin: String,
    /// Where it came from, for messages: `file` or `file:line`.
    pub location: String,
}

/// Why one input could not be ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// File (and line for JSONL) of the input.
    pub location: String,
    /// Document id when known.
    pub id: Option<String>,
    pub reason: String,
}

pub(crate) enum Item {
    Doc(Box<SourceDoc>),
    Failed(Failure),
}

/// One ingest argument, expanded to the files it contains.
#[derive(Debug)]
pub(crate) struct Root {
    pub origin: String,
    pub name: String,
    pub files: Vec<(PathBuf, Kind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Jsonl,
    Markdown,
    Html,
    Pdf,
    Text,
}

impl Kind {
    fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "jsonl" | "ndjson" => Kind::Jsonl,
            "md" | "markdown" => Kind::Markdown,
            "html" | "htm" | "xhtml" => Kind::Html,
            "pdf" => Kind::Pdf,
            "txt" | "text" => Kind::Text,
            _ => return None,
        })
    }
}

/// Expand ingest arguments to roots; a missing path or an unsupported file becomes a failure.
pub(crate) fn expand(paths: &[PathBuf], failures: &mut Vec<Failure>) -> Vec<Root> {
    let mut roots = Vec::new();
    for p in paths {
        let canon = match p.canonicalize() {
            Ok(c) => c,
            Err(e) => {
                failures.push(Failure {
                    location: p.display().to_string(),
                    id: None,
                    reason: format!("cannot open: {e}"),
                });
                continue;
            }
        };
        let name = canon
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "files".to_string());
        let mut files = Vec::new();
        if canon.is_dir() {
            walk(&canon, &mut files, failures);
            files.sort();
        } else {
            match Kind::of(&canon) {
                Some(k) => files.push((canon.clone(), k)),
                None => failures.push(Failure {
                    location: p.display().to_string(),
                    id: None,
                    reason: "unsupported file type (expected .jsonl, .md, .html, .pdf or .txt)"
                        .into(),
                }),
            }
        }
        roots.push(Root {
            origin: canon.to_string_lossy().into_owned(),
            name,
            files,
        });
    }
    roots
}

/// Collect the supported files under `root` (itself canonical). Symbolic links are
/// followed, but each folder and each file is taken once, by its canonical path, so a
/// link back up the tree (`self -> .`, `up -> ..`) ends the walk instead of looping.
/// Hidden entries (a leading dot) are skipped. The stack is explicit: no depth of
/// folders can overflow it.
fn walk(root: &Path, out: &mut Vec<(PathBuf, Kind)>, failures: &mut Vec<Failure>) {
    let mut seen_dirs = std::collections::HashSet::new();
    let mut seen_files = std::collections::HashSet::new();
    seen_dirs.insert(root.to_path_buf());
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                failures.push(Failure {
                    location: dir.display().to_string(),
                    id: None,
                    reason: format!("cannot list folder: {e}"),
                });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            let is_dir = path.is_dir();
            if !is_dir && Kind::of(&path).is_none() {
                continue;
            }
            let canon = match path.canonicalize() {
                Ok(c) => c,
                Err(e) => {
                    failures.push(Failure {
                        location: path.display().to_string(),
                        id: None,
                        reason: format!("cannot open: {e}"),
                    });
                    continue;
                }
            };
            if is_dir {
                if seen_dirs.insert(canon.clone()) {
                    stack.push(canon);
                }
            } else if let Some(k) = Kind::of(&canon).or_else(|| Kind::of(&path))
                && seen_files.insert(canon.clone())
            {
                out.push((canon, k));
            }
        }
    }
}

/// Units of work in a file, for the progress bar (lines for JSONL, 1 otherwise).
pub(crate) fn work_units(path: &Path, kind: Kind) -> u64 {
    if kind != Kind::Jsonl {
        return 1;
    }
    let Ok(f) = std::fs::File::open(path) else {
        return 1;
    };
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut n = 0u64;
    let mut buf = Vec::new();
    while let Ok(k) = r.read_until(b'\n', &mut buf) {
        if k == 0 {
            break;
        }
        n += 1;
        buf.clear();
    }
    n.max(1)
}

/// A size in bytes for messages: `12.3 MiB`, `512 KiB`, `100 bytes`.
fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// The failure reason of a document over the size limit.
fn too_large(what: &str, n: u64, max: usize) -> String {
    format!(
        "{what} is {}, over the {} limit for one document (IngestOptions::max_record_bytes, `overseer ingest --max-record-mb`)",
        size(n),
        size(max as u64)
    )
}

/// Read one file of a root, calling `emit` for each document or failure, and
/// `tick` once per work unit (see [`work_units`]). Documents larger than `max_bytes`
/// (a JSONL line, a text file, a PDF's text) are failures.
pub(crate) fn read_file(
    root: &Root,
    path: &Path,
    kind: Kind,
    max_bytes: usize,
    emit: &mut dyn FnMut(Item),
    tick: &mut dyn FnMut(u64),
) {
    let location = path.display().to_string();
    if kind == Kind::Jsonl {
        read_jsonl(root, path, max_bytes, emit, tick);
        return;
    }
    tick(1);
    let fail = |reason: String| {
        Item::Failed(Failure {
            location: location.clone(),
            id: Some(location.clone()),
            reason,
        })
    };
    if kind != Kind::Pdf
        && let Ok(m) = std::fs::metadata(path)
        && m.len() > max_bytes as u64
    {
        return emit(fail(too_large("the file", m.len(), max_bytes)));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return emit(fail(format!("cannot read: {e}"))),
    };
    emit(file_item(root, &location, path, kind, &bytes, max_bytes));
}

/// The document (or failure) of one non-JSONL file at `location` (`path`) holding `bytes`.
fn file_item(
    root: &Root,
    location: &str,
    path: &Path,
    kind: Kind,
    bytes: &[u8],
    max_bytes: usize,
) -> Item {
    let fail = |reason: String| {
        Item::Failed(Failure {
            location: location.to_string(),
            id: Some(location.to_string()),
            reason,
        })
    };
    if kind != Kind::Pdf && bytes.len() > max_bytes {
        return fail(too_large("the file", bytes.len() as u64, max_bytes));
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (title, text) = match kind {
        Kind::Pdf => match pdf::extract(bytes) {
            Ok(t) if t.len() > max_bytes => {
                return fail(too_large("its text", t.len() as u64, max_bytes));
            }
            Ok(t) => (stem, t),
            Err(reason) => return fail(reason),
        },
        _ => {
            let raw = String::from_utf8_lossy(bytes);
            match kind {
                Kind::Html => match html::to_text(&raw) {
                    Ok(t) => t,
                    Err(reason) => return fail(reason),
                },
                Kind::Markdown => markdown(&raw, &stem),
                _ => (plain_title(&raw, &stem), raw.replace("\r\n", "\n")),
            }
        }
    };
    if text.trim().is_empty() {
        return fail("no text".into());
    }
    let meta = DocMeta {
        id: location.to_string(),
        title,
        url: Some(format!("file://{location}")),
        source: root.name.clone(),
        source_type: Some(
            match kind {
                Kind::Pdf => "pdf",
                Kind::Html => "html",
                Kind::Markdown => "markdown",
                _ => "text",
            }
            .into(),
        ),
        ..DocMeta::default()
    };
    Item::Doc(Box::new(SourceDoc {
        meta,
        text,
        origin: root.origin.clone(),
        location: location.to_string(),
    }))
}

/// What ingest makes of one file named `name` holding `bytes`, read from memory: the
/// reader is chosen by the extension as for files on disk (`.jsonl`, `.md`, `.html`,
/// `.pdf`, `.txt`, ...), and each document comes as its metadata and text (one per
/// JSONL record), each bad record or file as a [`Failure`]. Documents over `max_bytes`
/// are failures, as in [`crate::IngestOptions::max_record_bytes`]. For fuzzing and tests
/// of the readers; an unsupported extension gives one failure.
pub fn parse_bytes(
    name: &str,
    bytes: &[u8],
    max_bytes: usize,
) -> Vec<std::result::Result<(DocMeta, String), Failure>> {
    let path = Path::new(name);
    let root = Root {
        origin: name.to_string(),
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "files".to_string()),
        files: Vec::new(),
    };
    let mut out = Vec::new();
    let mut emit = |item: Item| {
        out.push(match item {
            Item::Doc(d) => Ok((d.meta, d.text)),
            Item::Failed(f) => Err(f),
        });
    };
    match Kind::of(path) {
        None => emit(Item::Failed(Failure {
            location: name.to_string(),
            id: None,
            reason: "unsupported file type".into(),
        })),
        Some(Kind::Jsonl) => read_lines(&root, name, bytes, max_bytes, &mut emit, &mut |_| {}),
        Some(kind) => emit(file_item(&root, name, path, kind, bytes, max_bytes)),
    }
    out
}

/// Markdown: drop a YAML front-matter block (taking `title:` from it), title from the
/// first `# ` heading else the file name.
fn markdown(raw: &str, stem: &str) -> (String, String) {
    let raw = raw.replace("\r\n", "\n");
    let mut body = raw.as_str();
    let mut title = None;
    if let Some(rest) = raw.strip_prefix("---\n")
        && let Some(end) = rest.find("\n---")
    {
        for line in rest[..end].lines() {
            if let Some(t) = line.strip_prefix("title:") {
                title = Some(t.trim().trim_matches('"').to_string());
            }
        }
        body = rest[end + 4..].trim_start_matches(['-', '\n']);
    }
    let title = title.or_else(|| {
        body.lines()
            .find_map(|l| l.strip_prefix("# ").map(|t| t.trim().to_string()))
    });
    (title.unwrap_or_else(|| stem.to_string()), body.to_string())
}

fn plain_title(raw: &str, stem: &str) -> String {
    raw.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .filter(|l| l.chars().count() <= 120)
        .map(str::to_string)
        .unwrap_or_else(|| stem.to_string())
}

fn read_jsonl(
    root: &Root,
    path: &Path,
    max_bytes: usize,
    emit: &mut dyn FnMut(Item),
    tick: &mut dyn FnMut(u64),
) {
    let location = path.display().to_string();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tick(1);
            return emit(Item::Failed(Failure {
                location,
                id: None,
                reason: format!("cannot read: {e}"),
            }));
        }
    };
    let reader = BufReader::with_capacity(1 << 20, file);
    read_lines(root, &location, reader, max_bytes, emit, tick);
}

/// The records of a JSONL file at `location`, from `reader`; see [`read_file`].
fn read_lines(
    root: &Root,
    location: &str,
    mut reader: impl BufRead,
    max_bytes: usize,
    emit: &mut dyn FnMut(Item),
    tick: &mut dyn FnMut(u64),
) {
    let default_source = root.name.clone();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        // At most `max_bytes` (+ the newline) of one line in memory; the rest of a
        // longer line is skipped unread.
        let limit = max_bytes as u64 + 1;
        let read = (&mut reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .and_then(|n| {
                if buf.len() as u64 == limit && buf.last() != Some(&b'\n') {
                    skip_line(&mut reader).map(|rest| Some(n as u64 + rest))
                } else {
                    Ok(None)
                }
            });
        let oversized = match read {
            Ok(_) if buf.is_empty() => break,
            Ok(o) => o,
            Err(e) => {
                emit(Item::Failed(Failure {
                    location: format!("{location}:{}", line_no + 1),
                    id: None,
                    reason: format!("read error: {e}"),
                }));
                break;
            }
        };
        line_no += 1;
        tick(1);
        let loc = format!("{location}:{line_no}");
        if let Some(n) = oversized {
            emit(Item::Failed(Failure {
                location: loc,
                id: None,
                reason: too_large("the record", n, max_bytes),
            }));
            continue;
        }
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l.trim(),
            Err(_) => {
                emit(Item::Failed(Failure {
                    location: loc,
                    id: None,
                    reason: "line is not valid UTF-8".into(),
                }));
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        match parse_ard(line, &default_source) {
            Ok((meta, text)) => emit(Item::Doc(Box::new(SourceDoc {
                meta,
                text,
                origin: root.origin.clone(),
                location: loc,
            }))),
            Err((id, reason)) => emit(Item::Failed(Failure {
                location: loc,
                id,
                reason,
            })),
        }
    }
}

/// Consume the rest of the current line (through its newline) without keeping it;
/// returns the bytes skipped.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(skipped);
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(skipped + i as u64 + 1);
            }
            None => {
                let n = chunk.len();
                reader.consume(n);
                skipped += n as u64;
            }
        }
    }
}

type ParseError = (Option<String>, String);

/// Parse one ARD record. Known fields go to [`DocMeta`], the rest to `extra`.
pub(crate) fn parse_ard(line: &str, default_source: &str) -> Result<(DocMeta, String), ParseError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| (None, format!("malformed JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err((None, "not a JSON object".into()));
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        None | Some(Value::Null) => None,
        Some(Value::String(_)) => return Err((None, "empty \"id\"".into())),
        Some(_) => return Err((None, "\"id\" is not a string".into())),
    };
    let take_str = |obj: &mut Map<String, Value>, k: &str| match obj.remove(k) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let take_list = |obj: &mut Map<String, Value>, k: &str| match obj.remove(k) {
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => s
            .split([',', ';'])
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    };
    let mut text = take_str(&mut obj, "text").unwrap_or_default();
    if text.trim().is_empty() {
        // Some ARD records carry only summaries; they are still worth finding.
        if let Some(Value::Array(s)) = obj.get("summaries") {
            text = s
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n\n");
        }
    }
    let title = take_str(&mut obj, "title").unwrap_or_default();
    if text.trim().is_empty() {
        return Err((id, "record has no text".into()));
    }
    let id = match id {
        Some(id) => id,
        None => {
            // No id: derive a stable one from the content so re-ingesting is idempotent.
            use sha2::Digest;
            let h = sha2::Sha256::digest(format!("{title}\u{0}{text}").as_bytes());
            h.iter().take(16).map(|b| format!("{b:02x}")).collect()
        }
    };
    let date = take_str(&mut obj, "date_published").or_else(|| take_str(&mut obj, "date"));
    let meta = DocMeta {
        id,
        title,
        authors: take_list(&mut obj, "authors"),
        date,
        url: take_str(&mut obj, "url"),
        source: take_str(&mut obj, "source").unwrap_or_else(|| default_source.to_string()),
        source_type: take_str(&mut obj, "source_type"),
        tags: take_list(&mut obj, "tags"),
        extra: obj,
    };
    Ok((meta, text))
}

/// A one-page PDF with `text` (or none), for tests.
#[cfg(test)]
pub(crate) fn test_pdf(text: Option<&str>) -> Vec<u8> {
    pdf::tests::make_pdf(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ard_record_keeps_extra_fields() {
        let line = r#"{"id":"a1","source":"s","title":"T","authors":["X Y"],"text":"body","url":"u","date_published":"2020-01-02T00:00:00Z","tags":["t1"],"newsletter":{"n":3},"summaries":["sum"]}"#;
        let (m, text) = parse_ard(line, "dflt").expect("valid record");
        assert_eq!(m.id, "a1");
        assert_eq!(text, "body");
        assert_eq!(m.authors, vec!["X Y"]);
        assert_eq!(m.date.as_deref(), Some("2020-01-02T00:00:00Z"));
        assert_eq!(m.extra.get("newsletter"), Some(&serde_json::json!({"n":3})));
        assert!(m.extra.contains_key("summaries"));
        assert_eq!(m.source, "s");
    }

    #[test]
    fn ard_errors_are_reasons() {
        assert!(
            parse_ard("{not json", "s")
                .unwrap_err()
                .1
                .contains("malformed JSON")
        );
        assert!(
            parse_ard("[1,2]", "s")
                .unwrap_err()
                .1
                .contains("not a JSON object")
        );
        let (id, r) = parse_ard(r#"{"id":"x","text":"  "}"#, "s").unwrap_err();
        assert_eq!(id.as_deref(), Some("x"));
        assert!(r.contains("no text"));
        // summaries stand in for a missing text
        let (m, t) = parse_ard(r#"{"id":"y","summaries":["a","b"]}"#, "s").expect("summaries");
        assert_eq!((m.source.as_str(), t.as_str()), ("s", "a\n\nb"));
    }

    #[test]
    fn parse_bytes_reads_like_files() {
        let jsonl =
            b"{\"id\":\"a\",\"text\":\"one\"}\n\nnot json\n{\"id\":\"b\",\"text\":\"two\"}\n";
        let got = parse_bytes("set.jsonl", jsonl, 1 << 20);
        assert_eq!(got.len(), 3);
        let (m, t) = got[0].as_ref().expect("record");
        assert_eq!(
            (m.id.as_str(), t.as_str(), m.source.as_str()),
            ("a", "one", "set")
        );
        let f = got[1].as_ref().expect_err("bad line");
        assert_eq!(f.location, "set.jsonl:3");
        assert!(got[2].is_ok());
        let got = parse_bytes("page.html", b"<h1>T</h1><p>Body text.</p>", 1 << 20);
        let (m, t) = got[0].as_ref().expect("html");
        assert_eq!(m.source_type.as_deref(), Some("html"));
        assert!(t.contains("Body text."), "{t}");
        let got = parse_bytes(
            "paper.pdf",
            &test_pdf(Some("Hello from a PDF file with words")),
            1 << 20,
        );
        assert!(got[0].as_ref().expect("pdf").1.contains("Hello"));
        // Limits and unsupported kinds are failures, as for files.
        assert!(parse_bytes("big.txt", &[b'x'; 100], 10)[0].is_err());
        assert!(parse_bytes("empty.md", b"  \n", 10)[0].is_err());
        assert!(parse_bytes("x.docx", b"text", 10)[0].is_err());
    }

    #[test]
    fn missing_id_is_derived_from_content() {
        let (a, _) = parse_ard(r#"{"title":"t","text":"x"}"#, "s").expect("ok");
        let (b, _) = parse_ard(r#"{"title":"t","text":"x"}"#, "s").expect("ok");
        assert_eq!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
    }

    #[test]
    fn markdown_front_matter_and_title() {
        let (t, body) = markdown("---\ntitle: \"Hello\"\n---\n# Other\ntext", "stem");
        assert_eq!(t, "Hello");
        assert!(body.starts_with("# Other"));
        let (t, _) = markdown("intro\n# Heading one\nx", "stem");
        assert_eq!(t, "Heading one");
        let (t, _) = markdown("no heading", "stem");
        assert_eq!(t, "stem");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_loops_end_and_each_file_is_taken_once() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tmp");
        let l = tmp.path().join("L");
        std::fs::create_dir_all(l.join("a")).expect("mkdir");
        std::fs::write(l.join("a/n.txt"), "hi").expect("w");
        // One link to itself: the file was listed 41 times (once per level until ELOOP).
        symlink(".", l.join("self")).expect("link");
        let mut failures = Vec::new();
        let roots = expand(std::slice::from_ref(&l), &mut failures);
        let canon = l.join("a/n.txt").canonicalize().expect("canon");
        assert_eq!(roots[0].files, vec![(canon.clone(), Kind::Text)]);
        assert!(failures.is_empty(), "{failures:?}");
        // Two links that reach each other: the walk never ended. Run it on a thread so
        // that a regression fails here instead of hanging the test run.
        symlink("..", l.join("a/up")).expect("link");
        let (tx, rx) = std::sync::mpsc::channel();
        let arg = l.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let roots = expand(&[arg], &mut failures);
            let _ = tx.send((roots, failures));
        });
        let (roots, failures) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the walk ends");
        assert_eq!(roots[0].files, vec![(canon, Kind::Text)]);
        assert!(failures.is_empty(), "{failures:?}");
    }
}
