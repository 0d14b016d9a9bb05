//! PDF text layer extraction. The PDF crate can panic on hostile files, so it runs
//! under `catch_unwind`; a PDF without a text layer (scans) is reported, not indexed.

/// Extract the text of a PDF, or say why not.
pub(super) fn extract(bytes: &[u8]) -> Result<String, String> {
    if !bytes.starts_with(b"%PDF") {
        return Err("not a PDF file (no %PDF header)".into());
    }
    // Silence the default panic message for this call only would need a global hook;
    // a panic inside the crate is caught and reported as a failure instead.
    let result = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes));
    let text = match result {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(format!("cannot read PDF: {e}")),
        Err(_) => return Err("cannot read PDF: the PDF parser crashed on this file".into()),
    };
    let text = tidy(&text);
    if text.chars().filter(|c| c.is_alphanumeric()).count() < 20 {
        return Err("PDF has no text layer (scanned image?); OCR it first".into());
    }
    Ok(text)
}

/// Normalise extracted text: unify line ends, drop form feeds, squeeze blank runs.
fn tidy(s: &str) -> String {
    let s = s.replace("\r\n", "\n").replace(['\r', '\u{c}'], "\n");
    let mut out = String::with_capacity(s.len());
    let mut blank = 0;
    for line in s.lines() {
        let l = line.trim_end();
        if l.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(l);
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Make a one-page PDF with `text` (or no text at all) using lopdf.
    pub(crate) fn make_pdf(text: Option<&str>) -> Vec<u8> {
        use lopdf::content::{Content, Operation};
        use lopdf::{Document, Object, Stream, dictionary};
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
        });
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
        });
        let mut ops = vec![];
        if let Some(t) = text {
            ops = vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 12.into()]),
                Operation::new("Td", vec![72.into(), 700.into()]),
                Operation::new("Tj", vec![Object::string_literal(t)]),
                Operation::new("ET", vec![]),
            ];
        }
        let content = Content { operations: ops };
        let content_id = doc.add_object(Stream::new(
            dictionary! {},
            content.encode().expect("encode content"),
        ));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
        });
        let pages = dictionary! {
            "Type" => "Pages", "Kids" => vec![page_id.into()], "Count" => 1,
            "Resources" => resources_id, "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        };
        doc.objects.insert(pages_id, Object::Dictionary(pages));
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        let mut buf = Vec::new();
        doc.save_to(&mut buf).expect("save pdf");
        buf
    }

    #[test]
    fn pdf_with_text_is_extracted() {
        let pdf = make_pdf(Some("Reward hacking in reinforcement learning agents"));
        let text = extract(&pdf).expect("text layer");
        assert!(text.contains("Reward hacking"), "{text}");
    }

    #[test]
    fn pdf_without_text_is_reported() {
        let err = extract(&make_pdf(None)).unwrap_err();
        assert!(err.contains("no text layer"), "{err}");
    }

    #[test]
    fn garbage_is_reported_not_panicking() {
        assert!(extract(b"hello").unwrap_err().contains("not a PDF"));
        let mut junk = b"%PDF-1.4\n".to_vec();
        junk.extend((0..2000u32).map(|i| (i * 7919 % 251) as u8));
        assert!(extract(&junk).is_err());
    }
}
