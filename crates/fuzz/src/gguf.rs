//! The GGUF reader, the model configuration and everything else built from a model
//! file's header: tokenizer, chat template, and the loader for files that pass.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use overseer_lm::candle_core::quantized::gguf_file::Content;
use overseer_lm::{ChatTemplate, GgufInfo, LoadOptions, Message, Model, Tokenizer};

/// Where inputs that pass the header checks are written for [`Model::load`] (which
/// reads a path): one file per process, reused.
fn scratch() -> &'static Mutex<Option<tempfile::TempDir>> {
    static DIR: OnceLock<Mutex<Option<tempfile::TempDir>>> = OnceLock::new();
    DIR.get_or_init(|| Mutex::new(tempfile::tempdir().ok()))
}

/// Fuzz a GGUF file: reading and validating the header must give an error or a summary,
/// never panic; a summary's tensors lie inside the file. Files whose header validates
/// also go through the tokenizer, the chat template and the model loader.
pub fn gguf(data: &[u8]) {
    let name = Path::new("fuzz.gguf");
    let Ok(info) = GgufInfo::from_bytes(data, name) else {
        return;
    };
    assert_eq!(info.file_size, data.len() as u64);
    for t in &info.tensors {
        let end = t.offset.checked_add(t.bytes);
        assert!(
            end.is_some_and(|e| e <= info.file_size),
            "tensor {} at {} + {} past the end of a {} byte file",
            t.name,
            t.offset,
            t.bytes,
            info.file_size
        );
    }
    // `overseer model info --json`.
    assert!(serde_json::to_string(&info).is_ok());
    // The header validated: candle's reader must now read it too.
    let content = match Content::read(&mut Cursor::new(data)) {
        Ok(c) => c,
        Err(e) => panic!("validated header does not re-read: {e}"),
    };
    if let Ok(tok) = Tokenizer::from_gguf(&content, name) {
        for text in ["Hello <|im_start|>wörld 123\n", "", " \u{200b}\u{fffd}x"] {
            if let Ok(ids) = tok.encode(text, true) {
                assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
                let _ = tok.decode(&ids);
            }
        }
        if let Ok(t) = ChatTemplate::from_gguf(&content, &tok) {
            let _ = t.render(&[Message::system("s"), Message::user("<|im_end|>u")], true);
        }
    }
    if info.config.is_some() {
        let guard = scratch().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = guard.as_ref() {
            let path = dir.path().join("fuzz.gguf");
            if std::fs::write(&path, data).is_ok() {
                let opts = LoadOptions {
                    threads: Some(1),
                    ..LoadOptions::default()
                };
                let _ = Model::load(&path, &opts);
            }
        }
    }
}
