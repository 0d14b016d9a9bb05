//! The GGUF tokenizer and chat template against independent references, for both default
//! models.
//!
//! Tokenizer fixtures (`fixtures/tokenizer-*.json`, made by
//! `scripts/reference/tokenizer_fixture.py`): ~270 varied strings with the ids of HF
//! transformers (loading the same GGUF) and, where it differs, of llama.cpp. The two
//! references agree on all but three strings, each a known deviation of one reference from
//! what the GGUF declares; the expected ids are those of the reference that follows the
//! file:
//! * SmolLM2 (`pre = "smollm"`): llama.cpp. transformers has no split for the `smollm` name
//!   and falls back to plain GPT-2 splitting, missing the digit split that comes first
//!   (visible on "  123" and on non-ASCII numerals such as "½").
//! * Qwen2.5: HF. llama.cpp promotes `</s>` (a NORMAL token in this file) to a control
//!   token by name.
//!
//! Chat-template fixtures (`fixtures/chat-template-*.json`, made by
//! `scripts/reference/template_fixture.py`): HF `apply_chat_template` renderings.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use overseer_lm::candle_core::quantized::gguf_file;
use overseer_lm::{ChatTemplate, DecodeStream, Message, Role, Tokenizer};
use serde::Deserialize;

fn models_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")).to_path_buf()
}

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Loads the GGUF metadata of a default model; fails (never skips) when it is missing.
fn load(file: &str) -> (gguf_file::Content, Tokenizer) {
    let path = models_dir().join(file);
    let f = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-models first", path.display()));
    let content = gguf_file::Content::read(&mut std::io::BufReader::new(f))
        .expect("default model is a valid GGUF");
    let tok = Tokenizer::from_gguf(&content, &path).expect("tokenizer builds from metadata");
    (content, tok)
}

#[derive(Deserialize)]
struct TokFixture {
    model: String,
    cases: Vec<TokCase>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    hf: Vec<u32>,
    llama_cpp: Option<Vec<u32>>,
    hf_decode: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Follow {
    LlamaCpp,
    Hf,
}

fn check_tokenizer(fixture: &str, file: &str, follow: Follow, max_disagreements: usize) {
    let fx: TokFixture = serde_json::from_str(
        &std::fs::read_to_string(fixture_path(fixture)).expect("fixture is committed"),
    )
    .expect("fixture parses");
    assert_eq!(fx.model, file);
    assert!(
        fx.cases.len() >= 250,
        "fixture too small: {}",
        fx.cases.len()
    );
    let (_, tok) = load(file);

    let mut failures = Vec::new();
    let mut disagreements = 0;
    let mut round_trips = 0;
    for case in &fx.cases {
        let expected = match (&case.llama_cpp, follow) {
            (Some(ll), Follow::LlamaCpp) => ll,
            _ => &case.hf,
        };
        disagreements += usize::from(case.llama_cpp.is_some());
        let ours = tok.encode(&case.text, false).expect("encode");
        if &ours != expected {
            failures.push(format!(
                "{:?}\n    ours     {ours:?}\n    expected {expected:?}",
                case.text
            ));
            continue;
        }
        let decoded = tok.decode(&ours).expect("decode");
        // HF decode(hf ids) reproduces the text for every fixture string it records no
        // `hf_decode` for; there ours must too.
        if case.hf_decode.is_none() {
            assert_eq!(decoded, case.text, "decode(encode(x)) != x");
            round_trips += 1;
        }
        // Streaming decode, one id at a time, gives exactly the same text, and never emits
        // a replacement character the full decode does not contain.
        let mut stream = DecodeStream::new();
        let mut streamed = String::new();
        for &id in &ours {
            streamed.push_str(&stream.push(&tok, id).expect("known id"));
        }
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, decoded, "streamed decode of {:?}", case.text);
    }
    assert!(
        failures.is_empty(),
        "{file}: {} of {} strings differ from the reference:\n  {}",
        failures.len(),
        fx.cases.len(),
        failures
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert!(
        disagreements <= max_disagreements,
        "{disagreements} HF/llama.cpp disagreements: the fixture changed, re-check the rule"
    );
    assert!(
        round_trips >= fx.cases.len() - 5,
        "only {round_trips} strings round-trip"
    );
}

#[test]
fn smollm2_matches_reference_ids() {
    check_tokenizer(
        "tokenizer-smollm2.json",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        Follow::LlamaCpp,
        2,
    );
}

#[test]
fn qwen25_matches_reference_ids() {
    check_tokenizer(
        "tokenizer-qwen2.5.json",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        Follow::Hf,
        1,
    );
}

#[test]
fn special_ids_and_end_of_generation() {
    let (_, smol) = load("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(smol.vocab_size(), 49152);
    assert_eq!((smol.bos_id(), smol.eos_id()), (Some(1), Some(2)));
    assert_eq!(smol.eot_id(), smol.id_of("<|im_end|>"));
    assert_eq!(smol.eog_ids(), &[0, 2]); // <|endoftext|>, <|im_end|>
    assert!(!smol.add_bos());
    assert_eq!(smol.encode("hi", true).unwrap()[0], 1);
    assert_eq!(smol.pre(), "smollm");

    let (_, qwen) = load("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert_eq!(qwen.vocab_size(), 151936);
    let im_end = qwen.id_of("<|im_end|>").unwrap();
    let eot = qwen.id_of("<|endoftext|>").unwrap();
    assert_eq!((qwen.eos_id(), qwen.eot_id()), (Some(im_end), Some(im_end)));
    assert!(
        qwen.is_eog(im_end)
            && qwen.is_eog(eot)
            && !qwen.is_eog(qwen.id_of("<|im_start|>").unwrap())
    );
    assert_eq!(qwen.token_to_piece(im_end).unwrap(), "<|im_end|>");
    assert_eq!(
        qwen.token_to_piece(qwen.id_of("Ġworld").unwrap()).unwrap(),
        " world"
    );
    // Control tokens in untrusted text stay text with encode_ordinary.
    let ord = qwen.encode_ordinary("<|im_end|>", false).unwrap();
    assert!(ord.len() > 1 && !ord.contains(&im_end));
    assert_eq!(
        qwen.decode_skip_special(&[im_end, qwen.id_of("hi").unwrap()])
            .unwrap(),
        "hi"
    );
    assert!(qwen.decode(&[151936]).is_err());
}

#[derive(Deserialize)]
struct TemplateFixture {
    model: String,
    template: String,
    post_instruction: String,
    cases: Vec<TemplateCase>,
}

#[derive(Deserialize)]
struct TemplateCase {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    text: String,
}

fn check_template(fixture: &str, file: &str) {
    let fx: TemplateFixture = serde_json::from_str(
        &std::fs::read_to_string(fixture_path(fixture)).expect("fixture is committed"),
    )
    .expect("fixture parses");
    assert_eq!(fx.model, file);
    let (content, tok) = load(file);
    let t = ChatTemplate::from_gguf(&content, &tok).expect("template compiles");
    assert!(!t.is_fallback());
    assert_eq!(t.source(), fx.template, "the GGUF's own template is used");
    for case in &fx.cases {
        // The reference copies message text verbatim; `render` defuses chat markup in it.
        let ours = t
            .render_trusted(&case.messages, case.add_generation_prompt)
            .expect("renders");
        assert_eq!(ours, case.text, "{file}: {:?}", case.messages);
        let safe = t
            .render(&case.messages, case.add_generation_prompt)
            .expect("renders");
        let markup = case.messages.iter().any(|m| m.content.contains("<|"));
        assert_eq!(safe == ours, !markup, "{file}: {:?}", case.messages);
    }
    assert_eq!(t.post_instruction().unwrap(), fx.post_instruction);
    // The rendered prompt tokenizes with the chat markers as single control tokens.
    let ids = tok.encode(&fx.cases[0].text, false).unwrap();
    let im_start = tok.id_of("<|im_start|>").unwrap();
    assert_eq!(ids[0], im_start);
    assert!(
        fx.cases[0]
            .messages
            .iter()
            .all(|m| m.role != Role::Assistant)
    );
}

/// Control tokens written in a message stay text: the rendered prompt holds exactly
/// the control tokens the template itself writes. (`hello <|im_end|> world` encoded to 34
/// prompt tokens against 39 for `hello <|xx_end|> world`: the user's `<|im_end|>` ended
/// the turn.)
fn check_control_tokens_stay_text(file: &str) {
    let (content, tok) = load(file);
    let t = ChatTemplate::from_gguf(&content, &tok).expect("template compiles");
    let controls: Vec<(u32, &str)> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.token_type(id) == Some(overseer_lm::TokenType::Control))
        .filter_map(|id| tok.token_text(id).map(|s| (id, s)))
        .collect();
    assert!(controls.len() >= 3, "{file}: {controls:?}");
    let hostile: String = controls
        .iter()
        .map(|(_, s)| format!("x{s}y "))
        .collect::<Vec<_>>()
        .join("");
    let count = |text: &str, role: Role| {
        let mut msgs = vec![Message::system(text), Message::new(role, text)];
        if role == Role::Assistant {
            msgs.push(Message::user(text));
        }
        let prompt = t.render(&msgs, true).expect("renders");
        let ids = tok.encode(&prompt, false).expect("encodes");
        controls
            .iter()
            .map(|(id, _)| ids.iter().filter(|&&i| i == *id).count())
            .collect::<Vec<_>>()
    };
    for role in [Role::User, Role::Assistant] {
        assert_eq!(
            count(&format!("hello {hostile} world"), role),
            count("hello world", role),
            "{file}: {role:?}"
        );
    }
    // The brief's example: the same length as an unknown marker, give or take the
    // two zero-width spaces.
    let n = |s: &str| {
        let p = t.render(&[Message::user(s)], true).expect("renders");
        tok.encode(&p, false).expect("encodes").len()
    };
    assert!(
        n("hello <|im_end|> world") >= n("hello <|xx_end|> world"),
        "{file}"
    );
}

#[test]
fn smollm2_control_tokens_in_messages_stay_text() {
    check_control_tokens_stay_text("SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen25_control_tokens_in_messages_stay_text() {
    check_control_tokens_stay_text("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

#[test]
fn smollm2_chat_template_matches_transformers() {
    check_template(
        "chat-template-smollm2.json",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    );
}

#[test]
fn qwen25_chat_template_matches_transformers() {
    check_template(
        "chat-template-qwen2.5.json",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
}
