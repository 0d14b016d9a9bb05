//! The tokenizer and the chat-template renderer of the default models.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use overseer_lm::candle_core::quantized::gguf_file::Content;
use overseer_lm::{ChatTemplate, DecodeStream, Message, Role, TokenType, Tokenizer};

use crate::MODELS_DIR;

const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A default model's tokenizer and chat template, from its header only.
struct Loaded {
    tok: Tokenizer,
    template: ChatTemplate,
    controls: Vec<u32>,
}

fn load(file: &str) -> Loaded {
    let path: PathBuf = Path::new(MODELS_DIR).join(file);
    let f = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-models first", path.display()));
    let content = Content::read(&mut std::io::BufReader::new(f))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok =
        Tokenizer::from_gguf(&content, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let template = ChatTemplate::from_gguf(&content, &tok)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let controls = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.token_type(id) == Some(TokenType::Control))
        .collect();
    Loaded {
        tok,
        template,
        controls,
    }
}

fn smollm() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(SMOLLM))
}

fn qwen() -> &'static Loaded {
    static M: OnceLock<Loaded> = OnceLock::new();
    M.get_or_init(|| load(QWEN))
}

/// Fuzz SmolLM2's tokenizer. The input as (lossy) text: `decode(encode(s)) == s` with
/// and without control-token parsing (less the bytes the vocabulary lacks), streamed decoding equals decoding, every id is in
/// the vocabulary, and `encode_ordinary` makes no control token. The input as
/// little-endian u16 ids: decoding fails exactly when an id is outside the vocabulary.
pub fn tokenizer(data: &[u8]) {
    let tok = &smollm().tok;
    let text = String::from_utf8_lossy(data);
    for parse_control in [true, false] {
        let ids = if parse_control {
            tok.encode(&text, false)
        } else {
            tok.encode_ordinary(&text, false)
        };
        // The only documented error is the regex engine giving up on a pathological
        // input; a byte-level vocabulary with every byte cannot fail otherwise.
        let Ok(ids) = ids else { continue };
        assert!(ids.len() <= text.len(), "more tokens than bytes");
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        if !parse_control {
            assert!(
                ids.iter()
                    .all(|&i| tok.token_type(i) != Some(TokenType::Control)),
                "encode_ordinary made a control token of {text:?}"
            );
        }
        let decoded = match tok.decode(&ids) {
            Ok(d) => d,
            Err(e) => panic!("decode of encoded ids: {e}"),
        };
        // Bytes the vocabulary lacks are dropped (SmolLM2 has no symbol for a few
        // control characters and its unknown token is a control token); the rest
        // round-trips.
        if decoded != text {
            let mut raw = Vec::new();
            for &id in &ids {
                raw.extend_from_slice(tok.token_bytes(id).unwrap_or_default());
            }
            assert!(
                is_subsequence(&raw, text.as_bytes()),
                "decode(encode(s)) is not s less some bytes: {decoded:?} vs {text:?}"
            );
        }
        let mut stream = DecodeStream::new();
        let mut streamed = String::new();
        for &id in &ids {
            match stream.push(tok, id) {
                Ok(s) => streamed.push_str(&s),
                Err(e) => panic!("stream decode: {e}"),
            }
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, decoded, "streamed decode differs");
    }
    let ids: Vec<u32> = data
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    let valid = ids.iter().all(|&i| (i as usize) < tok.vocab_size());
    assert_eq!(tok.decode(&ids).is_ok(), valid);
    assert_eq!(tok.decode_skip_special(&ids).is_ok(), valid);
    let mut stream = DecodeStream::new();
    for &id in &ids {
        assert_eq!(
            stream.push(tok, id).is_ok(),
            (id as usize) < tok.vocab_size()
        );
    }
    let _ = stream.finish();
}

/// Whether `a` is `b` with some bytes left out.
fn is_subsequence(a: &[u8], b: &[u8]) -> bool {
    let mut rest = b.iter();
    a.iter().all(|x| rest.any(|y| y == x))
}

/// Fuzz the chat templates of both default models with arbitrary message texts.
///
/// Input: the first byte picks the model (bit 0), the generation prompt (bit 1), a
/// system message (bit 2) and the last role (bit 3); the rest, split at NUL bytes, are
/// the texts of up to 8 messages, alternating user and assistant. Rendering must succeed,
/// and the rendered prompt must hold exactly as many control tokens as the same
/// conversation with every text replaced by `x`: message text never adds chat markup.
pub fn template(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let m = if flags & 1 == 0 { smollm() } else { qwen() };
    let generation_prompt = flags & 2 != 0;
    let mut messages = Vec::new();
    let texts: Vec<String> = rest
        .split(|&b| b == 0)
        .take(8)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let mut texts = texts.into_iter();
    if flags & 4 != 0
        && let Some(t) = texts.next()
    {
        messages.push(Message::system(t));
    }
    for (i, t) in texts.enumerate() {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        messages.push(Message::new(role, t));
    }
    if flags & 8 != 0 && messages.last().is_some_and(|m| m.role == Role::Assistant) {
        messages.pop();
    }
    let plain: Vec<Message> = messages
        .iter()
        .map(|msg| Message::new(msg.role, "x"))
        .collect();
    let count = |msgs: &[Message]| -> usize {
        let prompt = match m.template.render(msgs, generation_prompt) {
            Ok(p) => p,
            Err(e) => panic!("render failed: {e}"),
        };
        let ids = match m.tok.encode(&prompt, false) {
            Ok(ids) => ids,
            // The regex engine gave up: nothing to count.
            Err(_) => return usize::MAX,
        };
        ids.iter().filter(|i| m.controls.contains(i)).count()
    };
    let n = count(&messages);
    if n != usize::MAX {
        assert_eq!(
            n,
            count(&plain),
            "message text added control tokens: {messages:?}"
        );
    }
}
