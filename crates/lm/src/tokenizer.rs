//! The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
//!
//! Chat models in GGUF form carry their whole tokenizer: the vocabulary, the BPE merge
//! list, a type per token and the *name* of a pre-tokenizer (`tokenizer.ggml.pre`), whose
//! regexes are defined by llama.cpp rather than stored in the file. This module rebuilds a
//! byte-level BPE ("gpt2" tokenizer model) from that metadata so a model loads from the
//! GGUF alone, and reproduces HF `tokenizers` / llama.cpp token for token (checked against
//! the fixtures in `tests/fixtures/tokenizer-*.json`).
//!
//! Encoding is: (1) split the text on special tokens (CONTROL and USER_DEFINED tokens are
//! matched as whole tokens, longest first), (2) split each plain fragment with the
//! pre-tokenizer regexes the `pre` name requires (applied in sequence, matches and the
//! gaps between them both kept), (3) map each piece's UTF-8 bytes to GPT-2's printable
//! byte alphabet and (4) merge adjacent symbols by BPE rank with a priority queue.
//!
//! Why not the `tokenizers` crate (which could express the same pipeline with a `BPE`
//! model, `Split` pre-tokenizers, `ByteLevel` and added tokens): without its default
//! features it has no regex engine unless it builds the Oniguruma C library (`onig`) or
//! turns on its `unstable_wasm` feature, and the runtime crate sits under every other crate
//! of the workspace; the pipeline above is a few hundred lines on `fancy-regex` (already a
//! dependency, needed for the `\s+(?!\S)` look-ahead) and gives direct access to token
//! bytes, which the streaming decoder ([`DecodeStream`]) needs anyway.

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{Content, Value};
use fancy_regex::Regex;

use crate::error::{Error, Result};

/// Kind of a vocabulary entry (`tokenizer.ggml.token_type`, llama.cpp's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 1: an ordinary BPE token (byte-level encoded text).
    Normal,
    /// 2: the unknown token.
    Unknown,
    /// 3: a control token such as `<|im_start|>`; matched as a whole when encoding.
    Control,
    /// 4: a user-defined added token such as `<tool_call>`; matched as a whole.
    UserDefined,
    /// 5: an unused slot (padding of the vocabulary); never produced by encoding.
    Unused,
    /// 6: a byte token (`<0x41>`) of SentencePiece vocabularies.
    Byte,
    /// Any other value (0 = undefined in llama.cpp).
    Undefined,
}

impl TokenType {
    fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }

    /// Whether encoding matches this token as a whole before BPE (and decoding writes its
    /// text verbatim instead of inverting the byte-level mapping).
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined)
    }
}

// Pre-tokenizer regexes, as llama.cpp (`llama-vocab.cpp`) defines them per `pre` name and
// HF `tokenizers` writes them in the models' tokenizer.json files.

/// GPT-2's split: contractions, letters, digits, other symbols, trailing whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Qwen2 (and Qwen2.5): single digits, letters with one leading non-letter, newlines kept
/// together.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3: like Qwen2 but digits in groups of up to three.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex sequence for a `tokenizer.ggml.pre` name; `None` for names this module does
/// not know.
fn pre_regexes(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" => vec![GPT2],
        "qwen2" | "deepseek-r1-qwen" | "megrez" => vec![QWEN2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => vec![LLAMA3],
        // StarCoder-family vocabularies (SmolLM, SmolLM2): every digit on its own, then GPT-2.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            vec![r"\p{N}", GPT2]
        }
        // llama.cpp's fallback for GGUFs without a `pre` entry.
        "default" => vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        _ => return None,
    })
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map
/// to themselves, the other 68 bytes to U+0100.. in byte order.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are valid chars");
            next += 1;
            c
        };
    }
    map
}

/// A merge rule: the rank (lower merges first) and the id of the merged token.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// Byte strings stored back to back in one buffer: entry `i` is
/// `buf[ends[i - 1]..ends[i]]` (from 0 for the first).
///
/// Why: the tokenizer lives as long as the model, so its tables are resident during
/// every forward pass. As `Vec<String>` a 49k-token vocabulary costs a 24-byte header
/// plus a heap block of at least 32 bytes per token (~2.7 MB for SmolLM2's 7-byte
/// average token, and the tokenizer kept three such tables); packed it is the bytes
/// themselves plus 4 bytes of offset per token (~0.5 MB), in two allocations.
#[derive(Debug, Default)]
struct Packed {
    buf: Vec<u8>,
    ends: Vec<u32>,
}

impl Packed {
    fn with_capacity(entries: usize, bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(entries),
        }
    }

    /// Append an entry; `false` (and nothing appended) when the buffer would pass the
    /// 4 GiB that `u32` offsets address.
    #[must_use]
    fn push(&mut self, entry: &[u8]) -> bool {
        let Some(end) = u32::try_from(self.buf.len() + entry.len()).ok() else {
            return false;
        };
        self.buf.extend_from_slice(entry);
        self.ends.push(end);
        true
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Entry `i`, `None` past the end.
    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        self.buf.get(start..end)
    }

    /// Entry `i`, which the caller knows exists.
    fn at(&self, i: u32) -> &[u8] {
        self.get(i as usize)
            .expect("ids handed to Packed::at come from the same table")
    }
}

/// Byte-level BPE tokenizer rebuilt from GGUF metadata. Immutable and `Sync`: one instance
/// serves every session of a model.
///
/// The vocabulary is stored packed ([`Packed`]): token texts (valid UTF-8, the stored
/// form) and the bytes each token decodes to, plus the ids sorted by text for
/// [`Tokenizer::id_of`]. Only the merge table is a hash map, since BPE probes it for
/// every adjacent pair of symbols.
#[derive(Debug)]
pub struct Tokenizer {
    /// The stored (byte-level encoded) text of each token; valid UTF-8.
    texts: Packed,
    /// [`Tokenizer::tokens`], made on first use.
    strings: OnceLock<Vec<String>>,
    types: Vec<TokenType>,
    /// The bytes each token decodes to.
    bytes: Packed,
    /// Token ids sorted by text, one per distinct text (the lowest id when a text
    /// repeats, as in HF's vocabulary map).
    by_text: Vec<u32>,
    merges: HashMap<(u32, u32), Merge>,
    /// Token id of each byte's single-character token (`None` if the vocabulary lacks it).
    byte_tokens: [Option<u32>; 256],
    pre_name: String,
    pre: Vec<Regex>,
    /// Special tokens matched whole, longest text first: (text, id, type).
    specials: Vec<(String, u32, TokenType)>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    eog: Vec<u32>,
}

/// Reads an integer metadata value of any integer type.
fn meta_int(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's metadata; `path` only names the file in
    /// errors.
    ///
    /// Errors: [`Error::Metadata`] when `tokenizer.ggml.tokens` is missing, a tokenizer
    /// array has the wrong type or length, a special-token id is out of range, or the
    /// tokenizer model is not byte-level BPE (`gpt2`).
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Tokenizer> {
        let md = &content.metadata;
        let bad = |key: &str, reason: String| Error::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let model = match md.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(bad("tokenizer.ggml.model", "not a string".into())),
            None => return Err(bad("tokenizer.ggml.model", "missing".into())),
        };
        if model != "gpt2" {
            return Err(bad(
                "tokenizer.ggml.model",
                format!("unsupported tokenizer model '{model}' (supported: gpt2, byte-level BPE)"),
            ));
        }
        // Borrowed from the metadata: the tokenizer copies the texts once, packed.
        let strings = |key: &str| -> Result<Option<Vec<&str>>> {
            match md.get(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.as_str()),
                        _ => Err(bad(key, "array element is not a string".into())),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(_) => Err(bad(key, "not an array".into())),
            }
        };
        let tokens = strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| bad("tokenizer.ggml.tokens", "missing".into()))?;
        if tokens.is_empty() || u32::try_from(tokens.len()).is_err() {
            return Err(bad(
                "tokenizer.ggml.tokens",
                format!("bad length {}", tokens.len()),
            ));
        }
        let merges = strings("tokenizer.ggml.merges")?
            .ok_or_else(|| bad("tokenizer.ggml.merges", "missing (needed by BPE)".into()))?;
        let types = match md.get("tokenizer.ggml.token_type") {
            None => vec![TokenType::Normal; tokens.len()],
            Some(Value::Array(items)) => {
                if items.len() != tokens.len() {
                    return Err(bad(
                        "tokenizer.ggml.token_type",
                        format!("{} entries for {} tokens", items.len(), tokens.len()),
                    ));
                }
                items
                    .iter()
                    .map(|v| {
                        meta_int(v).map(TokenType::from_gguf).ok_or_else(|| {
                            bad("tokenizer.ggml.token_type", "not an integer".into())
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Some(_) => return Err(bad("tokenizer.ggml.token_type", "not an array".into())),
        };
        let n = tokens.len() as u32;
        let id = |key: &str| -> Result<Option<u32>> {
            match md.get(key) {
                None => Ok(None),
                Some(v) => {
                    let x = meta_int(v).ok_or_else(|| bad(key, "not an integer".into()))?;
                    // Some converters write -1 for "none".
                    if x < 0 {
                        return Ok(None);
                    }
                    match u32::try_from(x) {
                        Ok(x) if x < n => Ok(Some(x)),
                        _ => Err(bad(key, format!("id {x} outside the vocabulary of {n}"))),
                    }
                }
            }
        };
        let flag = |key: &str| match md.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let pre_name = match md.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.clone(),
            _ => "default".to_string(),
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let eot_meta = id("tokenizer.ggml.eot_token_id")?;
        let eom = id("tokenizer.ggml.eom_token_id")?;
        // llama.cpp adds BOS for BPE vocabularies unless the file says otherwise.
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(true);
        Tokenizer::build(
            Parts {
                tokens: &tokens,
                types,
                merges: &merges,
                pre_name,
                bos,
                eos,
                eot: eot_meta,
                eom,
                unk,
                pad,
                add_bos,
            },
            path,
        )
    }

    fn build(p: Parts<'_>, path: &Path) -> Result<Tokenizer> {
        let bad = |key: &str, reason: String| Error::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let alphabet = byte_alphabet();
        let mut char_to_byte: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in alphabet.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }

        let too_big = || {
            bad(
                "tokenizer.ggml.tokens",
                "vocabulary texts exceed 4 GiB".into(),
            )
        };
        let text_len: usize = p.tokens.iter().map(|t| t.len()).sum();
        let mut texts = Packed::with_capacity(p.tokens.len(), text_len);
        let mut bytes = Packed::with_capacity(p.tokens.len(), text_len);
        let mut decoded = Vec::new();
        for (t, ty) in p.tokens.iter().zip(&p.types) {
            decoded.clear();
            match ty {
                TokenType::Normal | TokenType::Unknown | TokenType::Undefined => {
                    for c in t.chars() {
                        match char_to_byte.get(&c) {
                            Some(b) => decoded.push(*b),
                            // Not from the byte alphabet: keep the character itself.
                            None => {
                                decoded.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes())
                            }
                        }
                    }
                }
                _ => decoded.extend_from_slice(t.as_bytes()),
            }
            if !texts.push(t.as_bytes()) || !bytes.push(&decoded) {
                return Err(too_big());
            }
        }

        // Text -> id while building (borrowing the packed texts); on duplicates the first
        // id wins, as in HF's vocabulary map. Dropped before the tokenizer is returned:
        // afterwards `by_text` answers the rare lookups by binary search.
        let mut vocab: HashMap<&[u8], u32> = HashMap::with_capacity(texts.len());
        for i in 0..texts.len() as u32 {
            vocab.entry(texts.at(i)).or_insert(i);
        }
        let mut by_text: Vec<u32> = vocab.values().copied().collect();
        by_text.sort_unstable_by(|&a, &b| texts.at(a).cmp(texts.at(b)));

        let mut byte_tokens = [None; 256];
        for (b, c) in alphabet.iter().enumerate() {
            byte_tokens[b] = vocab.get(c.encode_utf8(&mut [0; 4]).as_bytes()).copied();
        }

        let mut merges = HashMap::with_capacity(p.merges.len());
        let mut skipped = 0usize;
        let mut joined = String::new();
        for (rank, m) in p.merges.iter().enumerate() {
            let Some((l, r)) = m.split_once(' ') else {
                return Err(bad(
                    "tokenizer.ggml.merges",
                    format!("entry {rank} '{m}' has no space"),
                ));
            };
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            let (Some(&li), Some(&ri), Some(&mi)) = (
                vocab.get(l.as_bytes()),
                vocab.get(r.as_bytes()),
                vocab.get(joined.as_bytes()),
            ) else {
                skipped += 1;
                continue;
            };
            // The first (lowest-rank) rule for a pair wins.
            merges.entry((li, ri)).or_insert(Merge {
                rank: rank as u32,
                merged: mi,
            });
        }
        if skipped > 0 {
            tracing::warn!(
                "{}: {skipped} BPE merges name tokens missing from the vocabulary; ignored",
                path.display()
            );
        }

        let pre_sources = match pre_regexes(&p.pre_name) {
            Some(r) => r,
            None => {
                tracing::warn!(
                    "{}: unknown pre-tokenizer '{}'; using llama.cpp's default regexes \
                     (tokenization may differ from the model's original tokenizer)",
                    path.display(),
                    p.pre_name
                );
                pre_regexes("default").expect("default is a known name")
            }
        };
        let pre = pre_sources
            .iter()
            .map(|s| {
                Regex::new(s).map_err(|e| bad("tokenizer.ggml.pre", format!("regex {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;

        let mut specials: Vec<(String, u32, TokenType)> = p
            .tokens
            .iter()
            .zip(&p.types)
            .enumerate()
            .filter(|(_, (t, ty))| ty.is_special() && !t.is_empty())
            .map(|(i, (t, ty))| (t.to_string(), i as u32, *ty))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        // End of turn: the file's own entry, else the first chat end marker present.
        let find = |text: &str| {
            vocab
                .get(text.as_bytes())
                .copied()
                .filter(|&i| p.types[i as usize].is_special())
        };
        const EOT_NAMES: [&str; 7] = [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<EOT>",
            "<|end_of_text|>",
        ];
        let eot = p.eot.or_else(|| EOT_NAMES.iter().find_map(|n| find(n)));
        // Every token that ends a generation: eos, eot, eom and the usual end markers.
        let mut eog: Vec<u32> = [p.eos, eot, p.eom].into_iter().flatten().collect();
        eog.extend(EOT_NAMES.iter().filter_map(|n| find(n)));
        eog.extend(
            ["<|eom_id|>", "<|return|>", "<|call|>"]
                .iter()
                .filter_map(|n| find(n)),
        );
        eog.sort_unstable();
        eog.dedup();
        drop(vocab);

        Ok(Tokenizer {
            texts,
            strings: OnceLock::new(),
            types: p.types,
            bytes,
            by_text,
            merges,
            byte_tokens,
            pre_name: p.pre_name,
            pre,
            specials,
            bos: p.bos,
            eos: p.eos,
            eot,
            unk: p.unk,
            pad: p.pad,
            add_bos: p.add_bos,
            eog,
        })
    }

    /// Encodes `text`, matching special tokens (CONTROL and USER_DEFINED) written in the
    /// text as whole tokens, and prepending BOS when `add_bos` is set and the model has one
    /// (whether a model wants it: [`Tokenizer::add_bos`]).
    ///
    /// Errors: [`Error::Tokenizer`] if the regex engine gives up on a pathological input
    /// or a byte has no token and the model has no unknown token.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_impl(text, add_bos, true)
    }

    /// Like [`Tokenizer::encode`] but CONTROL tokens written in `text` are tokenized as
    /// plain text (USER_DEFINED tokens still match, as in llama.cpp): for untrusted text
    /// that must not inject chat markup.
    pub fn encode_ordinary(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        self.encode_impl(text, add_bos, false)
    }

    fn encode_impl(&self, text: &str, add_bos: bool, parse_control: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && let Some(b) = self.bos {
            out.push(b);
        }
        let mut plain_start = 0;
        let mut i = 0;
        let bytes = text.as_bytes();
        while i < bytes.len() {
            let found = self.specials.iter().find(|(t, _, ty)| {
                (parse_control || *ty != TokenType::Control) && bytes[i..].starts_with(t.as_bytes())
            });
            match found {
                Some((t, id, _)) => {
                    self.encode_plain(&text[plain_start..i], &mut out)?;
                    out.push(*id);
                    i += t.len();
                    plain_start = i;
                }
                None => i += 1,
            }
        }
        self.encode_plain(&text[plain_start..], &mut out)?;
        Ok(out)
    }

    /// Pre-tokenizes and BPE-encodes text that contains no special tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        // Each regex splits every piece from the previous stage; matches and the gaps
        // between them are both kept.
        let mut pieces: Vec<&str> = vec![text];
        for re in &self.pre {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    let m = m.map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        for piece in pieces {
            self.bpe(piece.as_bytes(), out)?;
        }
        Ok(())
    }

    /// Byte-level BPE of one pre-tokenized piece: start from one symbol per byte and apply
    /// the lowest-ranked applicable merge (leftmost on ties) until none applies. A binary
    /// heap of candidate pairs keeps this O(n log n) for long pieces (whitespace runs, long
    /// words); stale heap entries are detected and skipped.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) -> Result<()> {
        let mut ids: Vec<u32> = Vec::with_capacity(piece.len());
        for &b in piece {
            match (self.byte_tokens[usize::from(b)], self.unk) {
                (Some(id), _) => ids.push(id),
                // A byte the vocabulary lacks becomes the unknown token, unless that is a
                // control token (SmolLM2's is `<|endoftext|>`, which would end the text
                // mid-prompt): then the byte is dropped, as llama.cpp drops bytes without
                // a token. Plain text never makes a control token.
                (None, Some(u)) if self.types[u as usize] != TokenType::Control => ids.push(u),
                (None, Some(_)) => {}
                (None, None) => {
                    return Err(Error::Tokenizer(format!(
                        "byte 0x{b:02x} has no token and the vocabulary has no unknown token"
                    )));
                }
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        if ids.len() == 1 {
            out.push(ids[0]);
            return Ok(());
        }
        // Whole piece already a token and no merge path needed? BPE still decides: a piece
        // in the vocabulary is normally reached by merges, so always run them.
        let n = ids.len();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        // Min-heap on (rank, position) via Reverse ordering.
        let mut heap: BinaryHeap<std::cmp::Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, ids: &[u32], a: usize, b: usize| {
            if let Some(m) = self.merges.get(&(ids[a], ids[b])) {
                heap.push(std::cmp::Reverse((m.rank, a, ids[a], ids[b])));
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i, i + 1);
        }
        while let Some(std::cmp::Reverse((rank, a, left, right))) = heap.pop() {
            let b = next[a];
            // Stale if a was merged away or either side changed since the entry was pushed.
            if !alive[a] || b >= n || ids[a] != left || ids[b] != right {
                continue;
            }
            let m = self.merges[&(left, right)];
            debug_assert_eq!(m.rank, rank);
            ids[a] = m.merged;
            alive[b] = false;
            next[a] = next[b];
            if next[b] < n {
                prev[next[b]] = a;
            }
            if prev[a] < n {
                push(&mut heap, &ids, prev[a], a);
            }
            if next[a] < n {
                push(&mut heap, &ids, a, next[a]);
            }
        }
        let mut i = 0;
        while i < n {
            out.push(ids[i]);
            i = next[i];
        }
        Ok(())
    }

    /// Decodes ids to text: byte-level tokens are mapped back to bytes, special tokens
    /// give their text; invalid UTF-8 (e.g. a sequence cut mid-character) becomes U+FFFD.
    /// For incremental output use [`DecodeStream`].
    ///
    /// Errors: [`Error::Tokenizer`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            buf.extend_from_slice(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Like [`Tokenizer::decode`] but drops CONTROL tokens (BOS, `<|im_end|>`, ...).
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let b = self.token_bytes(id)?;
            if self.types[id as usize] != TokenType::Control {
                buf.extend_from_slice(b);
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The bytes one token decodes to (may be part of a UTF-8 character).
    ///
    /// Errors: [`Error::Tokenizer`] for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Result<&[u8]> {
        self.bytes.get(id as usize).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token id {id} outside the vocabulary of {}",
                self.vocab_size()
            ))
        })
    }

    /// The text of one token, lossily decoded (a partial UTF-8 character shows as U+FFFD).
    pub fn token_to_piece(&self, id: u32) -> Result<String> {
        Ok(String::from_utf8_lossy(self.token_bytes(id)?).into_owned())
    }

    /// The id of a vocabulary entry by its stored form (e.g. `"<|im_end|>"`, `"Ġthe"`).
    pub fn id_of(&self, token: &str) -> Option<u32> {
        let k = self
            .by_text
            .binary_search_by(|&i| self.texts.at(i).cmp(token.as_bytes()))
            .ok()?;
        Some(self.by_text[k])
    }

    /// The stored (byte-level encoded) form of one token, e.g. `"Ġthe"` or
    /// `"<|im_end|>"`; `None` for an id outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        // Every entry was pushed from a `&str`, so this never fails for a valid id.
        std::str::from_utf8(self.texts.get(id as usize)?).ok()
    }

    /// The vocabulary entries in id order, in their stored (byte-level encoded) form.
    ///
    /// Made on the first call and kept: one `String` per token (megabytes for a large
    /// vocabulary), which a model that never asks for the whole list does not pay for.
    /// For single tokens use [`Tokenizer::token_text`].
    pub fn tokens(&self) -> &[String] {
        self.strings.get_or_init(|| {
            (0..self.vocab_size() as u32)
                .map(|i| self.token_text(i).unwrap_or_default().to_string())
                .collect()
        })
    }

    /// The type of a token (`None` for an id outside the vocabulary).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Number of vocabulary entries.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// The pre-tokenizer name from the file (`tokenizer.ggml.pre`, "default" if absent).
    pub fn pre(&self) -> &str {
        &self.pre_name
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token (`tokenizer.ggml.eos_token_id`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token of the chat format (`<|im_end|>` for ChatML models).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Unknown token.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Padding token (`tokenizer.ggml.padding_token_id`).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the model expects BOS before a prompt (`tokenizer.ggml.add_bos_token`,
    /// default true as in llama.cpp); pass it as `encode`'s `add_bos`.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// All tokens that end a generation (eos, eot, and markers such as `<|im_end|>` and
    /// `<|endoftext|>`), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends a generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
}

/// Everything [`Tokenizer::build`] needs, read from (and borrowing) the metadata.
struct Parts<'a> {
    tokens: &'a [&'a str],
    types: Vec<TokenType>,
    merges: &'a [&'a str],
    pre_name: String,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
}

/// Incremental decoder for streaming generation: feed ids one at a time and get back only
/// complete UTF-8 text. Bytes of a character split across tokens are held until the
/// character is complete; invalid bytes become U+FFFD. The concatenation of every `push`
/// and the final `finish` equals `Tokenizer::decode` of all ids.
#[derive(Debug, Default, Clone)]
pub struct DecodeStream {
    pending: Vec<u8>,
}

impl DecodeStream {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token and returns the text that is now complete (possibly empty).
    ///
    /// Errors: [`Error::Tokenizer`] for an id outside the vocabulary.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.pending.extend_from_slice(tokenizer.token_bytes(id)?);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return Ok(out);
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[..valid])
                            .expect("valid_up_to marks a valid prefix"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return Ok(out);
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whether bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Returns whatever is still held (an unfinished character becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A tiny vocabulary: the 256 byte symbols, then merged tokens, then specials.
    fn toy(pre: &str) -> Tokenizer {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        let merges = ["a b", "ab c", "Ġ a", "c c", "a a"];
        tokens.extend(
            ["ab", "abc", "Ġa", "cc", "aa"]
                .iter()
                .map(|s| s.to_string()),
        );
        tokens.push("<|im_end|>".into());
        tokens.push("<|im_end|>x".into());
        tokens.push("<tool>".into());
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut types = vec![TokenType::Normal; tokens.len()];
        let n = types.len();
        types[n - 3] = TokenType::Control;
        types[n - 2] = TokenType::Control;
        types[n - 1] = TokenType::UserDefined;
        Tokenizer::build(
            Parts {
                tokens: &tokens,
                types,
                merges: &merges,
                pre_name: pre.into(),
                bos: None,
                eos: Some(n as u32 - 3),
                eot: None,
                eom: None,
                unk: None,
                pad: None,
                add_bos: false,
            },
            Path::new("toy"),
        )
        .expect("toy tokenizer builds")
    }

    #[test]
    fn missing_bytes_never_become_a_control_token() {
        // SmolLM2 lacks a few byte symbols (0x04 among them) and its unknown token is the
        // control token <|endoftext|>: found by fuzzing, "\u{4}" encoded to end-of-text.
        let mut t = toy("gpt2");
        assert!(t.byte_tokens[4].take().is_some(), "toy has every byte");
        let eos = t.eos.expect("toy has eos");
        t.unk = Some(eos);
        for parse_control in [true, false] {
            let ids = t.encode_impl("a\u{4}b\u{4}", false, parse_control).unwrap();
            assert!(!ids.contains(&eos), "{ids:?}");
            assert_eq!(t.decode(&ids).unwrap(), "ab");
        }
        // An unknown token that is not a control token still stands for the byte.
        t.types[0] = TokenType::Unknown;
        t.unk = Some(0);
        assert_eq!(t.encode("\u{4}", false).unwrap(), vec![0]);
        // Without an unknown token the byte is an error, as before.
        t.unk = None;
        assert!(t.encode("\u{4}", false).is_err());
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let a = byte_alphabet();
        let mut seen: Vec<char> = a.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(a[usize::from(b' ')], 'Ġ');
        assert_eq!(a[usize::from(b'\n')], 'Ċ');
        assert_eq!(a[usize::from(b'A')], 'A');
    }

    #[test]
    fn merges_follow_rank_then_leftmost() {
        let t = toy("gpt2");
        let id = |s: &str| t.id_of(s).expect("in toy vocab");
        assert_eq!(t.encode("abc", false).unwrap(), vec![id("abc")]);
        // "aaa": the leftmost "a a" merges first.
        assert_eq!(t.encode("aaa", false).unwrap(), vec![id("aa"), id("a")]);
        assert_eq!(
            // "a b" (rank 0) beats "Ġ a" (rank 2); then "ab c" takes the first c.
            t.encode(" abcc", false).unwrap(),
            vec![id("Ġ"), id("abc"), id("c")]
        );
    }

    #[test]
    fn specials_match_longest_first_and_ordinary_skips_control() {
        let t = toy("gpt2");
        let end = t.id_of("<|im_end|>").unwrap();
        let endx = t.id_of("<|im_end|>x").unwrap();
        let tool = t.id_of("<tool>").unwrap();
        assert_eq!(
            t.encode("<|im_end|>x<|im_end|>", false).unwrap(),
            vec![endx, end]
        );
        let ord = t.encode_ordinary("<|im_end|><tool>", false).unwrap();
        assert!(!ord.contains(&end) && ord.ends_with(&[tool]));
        assert_eq!(t.decode(&ord).unwrap(), "<|im_end|><tool>");
        assert!(t.is_eog(end));
    }

    #[test]
    fn decode_inverts_bytes_and_stream_holds_partial_chars() {
        let t = toy("qwen2");
        let text = "é€😀 ok\n\t";
        let ids = t.encode(text, false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
        // One token per byte: every multi-byte char is split across tokens.
        let mut s = DecodeStream::new();
        let mut streamed = String::new();
        for &id in &ids {
            let chunk = s.push(&t, id).unwrap();
            assert!(!chunk.contains(char::REPLACEMENT_CHARACTER));
            streamed.push_str(&chunk);
        }
        streamed.push_str(&s.finish());
        assert_eq!(streamed, text);
        // A prefix ending mid-character: lossy decode, no panic.
        let cut = t.decode(&ids[..3]).unwrap(); // "é" + the first byte of "€"
        assert!(cut.contains(char::REPLACEMENT_CHARACTER));
        assert!(t.decode(&[u32::MAX]).is_err());
    }

    #[test]
    fn invalid_bytes_in_stream_become_replacement() {
        let t = toy("gpt2");
        let b = |x: u8| t.byte_tokens[usize::from(x)].unwrap();
        let mut s = DecodeStream::new();
        assert_eq!(s.push(&t, b(0xff)).unwrap(), "\u{fffd}");
        assert_eq!(s.push(&t, b(0xe2)).unwrap(), "");
        assert!(s.has_pending());
        assert_eq!(s.push(&t, b(b'a')).unwrap(), "\u{fffd}a");
        assert_eq!(s.push(&t, b(0xe2)).unwrap(), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn packed_entries_round_trip() {
        let mut p = Packed::default();
        for e in [&b"abc"[..], b"", b"\xff\x00", b"d"] {
            assert!(p.push(e));
        }
        assert_eq!(p.len(), 4);
        assert_eq!(p.get(0), Some(&b"abc"[..]));
        assert_eq!(p.get(1), Some(&b""[..]));
        assert_eq!(p.get(2), Some(&b"\xff\x00"[..]));
        assert_eq!(p.at(3), b"d");
        assert_eq!(p.get(4), None);
        assert_eq!(p.buf.len(), 6, "one buffer, no per-entry padding");
    }

    #[test]
    fn lookups_by_text_and_id_agree() {
        let t = toy("gpt2");
        let n = t.vocab_size() as u32;
        for id in 0..n {
            let text = t.token_text(id).unwrap();
            // The toy vocabulary has no duplicate texts: every id is found again.
            assert_eq!(t.id_of(text), Some(id), "{text:?}");
            assert_eq!(t.tokens()[id as usize], text);
        }
        assert_eq!(t.tokens().len(), n as usize);
        assert_eq!(t.token_text(n), None);
        assert_eq!(t.id_of("not a token"), None);
        assert_eq!(t.id_of(""), None);
        // Special tokens decode to their text; byte-level tokens to their byte.
        assert_eq!(
            t.token_bytes(t.id_of("<tool>").unwrap()).unwrap(),
            b"<tool>"
        );
        assert_eq!(t.token_bytes(t.id_of("Ġa").unwrap()).unwrap(), b" a");
    }

    #[test]
    fn duplicate_texts_resolve_to_the_first_id() {
        let alphabet = byte_alphabet();
        let mut tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        tokens.push("ab".into());
        tokens.push("a".into()); // a second "a"
        tokens.push("ab".into()); // a second "ab"
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let t = Tokenizer::build(
            Parts {
                tokens: &tokens,
                types: vec![TokenType::Normal; tokens.len()],
                merges: &["a b"],
                pre_name: "gpt2".into(),
                bos: None,
                eos: None,
                eot: None,
                eom: None,
                unk: None,
                pad: None,
                add_bos: false,
            },
            Path::new("dup"),
        )
        .unwrap();
        let a = u32::from(b'a');
        assert_eq!(t.id_of("a"), Some(a));
        assert_eq!(t.id_of("ab"), Some(256));
        assert_eq!(t.encode("ab", false).unwrap(), vec![256]);
        assert_eq!(t.token_text(257), Some("a"));
        assert_eq!(t.tokens()[258], "ab");
    }

    /// The packed tables hold exactly what the file's metadata holds.
    #[test]
    fn packed_vocabulary_matches_the_gguf_metadata() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
            .join("SmolLM2-135M-Instruct.Q4_1.gguf");
        let f = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-models", path.display()));
        let content =
            Content::read(&mut std::io::BufReader::new(f)).expect("default model is a GGUF");
        let t = Tokenizer::from_gguf(&content, &path).unwrap();
        let Some(Value::Array(items)) = content.metadata.get("tokenizer.ggml.tokens") else {
            panic!("no token list");
        };
        assert_eq!(t.vocab_size(), items.len());
        let mut first: HashMap<&str, u32> = HashMap::new();
        for (i, v) in items.iter().enumerate() {
            let Value::String(s) = v else {
                panic!("token {i} is not a string")
            };
            assert_eq!(t.token_text(i as u32), Some(s.as_str()));
            first.entry(s.as_str()).or_insert(i as u32);
        }
        for (s, id) in first {
            assert_eq!(t.id_of(s), Some(id), "{s:?}");
        }
        assert_eq!(t.tokens().len(), items.len());
    }

    #[test]
    fn known_pre_names_compile() {
        for name in ["gpt2", "qwen2", "llama-bpe", "smollm", "default"] {
            let res = pre_regexes(name).unwrap();
            for r in res {
                Regex::new(r).unwrap();
            }
        }
        assert!(pre_regexes("no-such-pre").is_none());
    }
}
