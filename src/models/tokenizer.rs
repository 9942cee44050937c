//! The CLIP byte-level BPE tokenizer, giving the same ids as HuggingFace `CLIPTokenizerFast`
//! (openai/clip-vit-large-patch14, the tokenizer of Stable Diffusion 1.x).
//!
//! Pipeline, as in the tokenizer.json of those models: split out added tokens on the raw text;
//! normalise the rest (NFC, `\s+` to one space, lowercase); split into words with CLIP's regex;
//! map each word's UTF-8 bytes to GPT-2's printable characters; BPE each word with `</w>` on its
//! last character.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
const DEFAULT_MAX_LEN: usize = 77;
/// The slow `CLIPTokenizer` reads only this many merges from merges.txt (vocabulary size less
/// the 256 bytes and the 2 special tokens).
const SLOW_MERGES: usize = 49152 - 256 - 2;
/// CLIP's word regex (the `Split` pre-tokenizer of tokenizer.json).
const WORD_PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's regex, which the fast tokenizer's `ByteLevel` pre-tokenizer applies again to each CLIP
/// word. Words hold no whitespace, so its whitespace branches are dropped; in practice it only
/// splits a lowercased `<|ENDOFTEXT|>` (not an added token: those match case-sensitively) into
/// `<|`, `endoftext`, `|>`.
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";
/// Words cached at most; the cache is cleared past this so a long-running process stays bounded.
const CACHE_CAP: usize = 16_384;

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// GPT-2's `bytes_to_unicode`: every byte as a printable character.
    byte_chars: [char; 256],
    /// Added tokens matched literally in the raw text, before normalisation.
    added: Option<Regex>,
    words: Regex,
    byte_level: Regex,
    whitespace: Regex,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: u32,
    max_len: usize,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` when the folder has one, else `vocab.json` + `merges.txt`; reads
    /// `tokenizer_config.json` when present for the maximum length and special tokens.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { Some(read_json(&config_path)?) } else { None };
        let json_path = dir.join("tokenizer.json");
        let merges_path = if json_path.exists() { json_path.clone() } else { dir.join("merges.txt") };
        let special = |key: &str| config.as_ref().and_then(|c| token_content(c.get(key)?));
        let (vocab, merges, added, json_pad) = if json_path.exists() {
            load_tokenizer_json(&json_path)?
        } else {
            let vocab_path = dir.join("vocab.json");
            let vocab = parse_vocab(&read_json(&vocab_path)?, &vocab_path)?;
            let merges = load_merges_txt(&merges_path)?;
            // The slow tokenizer splits all its special tokens out of the text, the configured
            // ones included (SD 2.x pads with "!", so "background!" ends in the pad id).
            let mut added: Vec<String> = [BOS, EOS].iter().map(|t| t.to_string()).collect();
            added.extend(["bos_token", "eos_token", "unk_token", "pad_token"].iter().filter_map(|k| special(k)));
            added.sort();
            added.dedup();
            added.retain(|t| vocab.contains_key(t));
            (vocab, merges, added, None)
        };

        let id_of = |token: Option<String>, default: &str, fallback: u32| {
            token.as_deref().and_then(|t| vocab.get(t)).or_else(|| vocab.get(default)).copied().unwrap_or(fallback)
        };
        let bos_id = id_of(special("bos_token"), BOS, 49406);
        let eos_id = id_of(special("eos_token"), EOS, 49407);
        let unk_id = id_of(special("unk_token"), EOS, 49407);
        // SD 2.x tokenizers pad with "!" (id 0), so the pad token must come from the files.
        let pad_id = id_of(special("pad_token").or(json_pad), EOS, 49407);
        let max_len = config
            .as_ref()
            .and_then(|c| c.get("model_max_length")?.as_u64())
            // HF writes a huge sentinel when no length is set.
            .filter(|&n| n > 0 && n <= 1 << 20)
            .map_or(DEFAULT_MAX_LEN, |n| n as usize);

        let merges = index_merges(&vocab, &merges).with_context(|| merges_path.display().to_string())?;
        let added = if added.is_empty() {
            None
        } else {
            let mut sorted = added;
            // Longest first, so an added token that is a prefix of another cannot shadow it.
            sorted.sort_by_key(|t| std::cmp::Reverse(t.len()));
            let pattern = sorted.iter().map(|t| regex::escape(t)).collect::<Vec<_>>().join("|");
            Some(Regex::new(&pattern)?)
        };
        Ok(Self {
            vocab,
            merges,
            byte_chars: bytes_to_unicode(),
            added,
            words: Regex::new(WORD_PATTERN)?,
            byte_level: Regex::new(BYTE_LEVEL_PATTERN)?,
            whitespace: Regex::new(r"\s+")?,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            max_len,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = 0;
        if let Some(added) = &self.added {
            for m in added.find_iter(text) {
                self.encode_plain(&text[rest..m.start()], &mut ids);
                ids.push(self.vocab[m.as_str()]);
                rest = m.end();
            }
        }
        self.encode_plain(&text[rest..], &mut ids);
        ids
    }

    /// `[BOS] + ids + [EOS]`, the ids cut so the whole fits `max_len` (EOS is kept), then padded
    /// with the pad id to exactly `max_len`: HF's `padding="max_length", truncation=True`.
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Vec<u32> {
        let ids = self.encode(text);
        let keep = ids.len().min(max_len.saturating_sub(2));
        let mut out = Vec::with_capacity(max_len.max(2));
        out.push(self.bos_id);
        out.extend_from_slice(&ids[..keep]);
        out.push(self.eos_id);
        out.truncate(max_len);
        out.resize(max_len, self.pad_id);
        out
    }

    /// What a text encoder that reads `max_len` tokens (BOS and EOS included) leaves out of
    /// `text`: a sentence with the counts, or `None` when it reads all of it.
    pub fn truncation(&self, text: &str, max_len: usize) -> Option<String> {
        let (len, room) = (self.encode(text).len(), max_len.saturating_sub(2));
        (len > room).then(|| {
            format!("the prompt has {len} tokens; the text encoder reads {room} of them and drops the last {}: {text:?}", len - room)
        })
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    /// `model_max_length` of tokenizer_config.json, 77 when absent.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Refuses a tokenizer that can produce an id outside a text encoder's embedding table of
    /// `vocab_size` rows, naming the token (`what` names the tokenizer).
    pub fn check_vocab_size(&self, vocab_size: usize, what: &str) -> Result<()> {
        let specials = [("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id), ("unk", self.unk_id)];
        let worst = self.vocab.iter().map(|(t, &id)| (t.as_str(), id)).chain(specials).max_by_key(|(_, id)| *id);
        if let Some((token, id)) = worst
            && id as usize >= vocab_size
        {
            bail!("{what}: token `{token}` has id {id}, outside the text encoder's vocab_size {vocab_size}");
        }
        Ok(())
    }
    /// The id of a vocabulary entry, e.g. `"cat</w>"` or `"<|endoftext|>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Encodes text that holds no added token.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let nfc: String = text.nfc().collect();
        // Per-character lowercase, as the tokenizers crate does (no final-sigma rule).
        let normalized: String = self.whitespace.replace_all(&nfc, " ").chars().flat_map(char::to_lowercase).collect();
        for word in self.words.find_iter(&normalized) {
            for piece in self.byte_level.find_iter(word.as_str()) {
                self.encode_word(piece.as_str(), ids);
            }
        }
    }

    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(word) {
            ids.extend_from_slice(hit);
            return;
        }
        let tokens = self.bpe(word);
        ids.extend_from_slice(&tokens);
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(word.to_string(), tokens);
    }

    /// BPE over one word: repeatedly merge the adjacent pair of lowest rank.
    fn bpe(&self, word: &str) -> Vec<u32> {
        let bytes = word.as_bytes();
        let mut symbols: Vec<u32> = bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let mut s = self.byte_chars[b as usize].to_string();
                if i + 1 == bytes.len() {
                    s.push_str("</w>");
                }
                self.vocab.get(&s).copied().unwrap_or(self.unk_id)
            })
            .collect();
        loop {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, (w[0], w[1]), merged)))
                .min_by_key(|m| m.0);
            let Some((_, pair, merged)) = best else { break };
            // Merge every occurrence of the pair, left to right.
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
        symbols
    }
}

type Loaded = (HashMap<String, u32>, Vec<(String, String)>, Vec<String>, Option<String>);

/// vocab, merges, added tokens and pad token of a HF fast-tokenizer file.
fn load_tokenizer_json(path: &Path) -> Result<Loaded> {
    let json = read_json(path)?;
    let model = json.get("model").with_context(|| format!("{}: no `model`", path.display()))?;
    let mut vocab = parse_vocab(model.get("vocab").unwrap_or(&Value::Null), path)?;
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: `model.merges` is not a list", path.display()))?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()).map(|(a, b)| (a.into(), b.into())),
                _ => None,
            };
            pair.with_context(|| format!("{}: merge {i} is neither \"a b\" nor [a, b]", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut added = Vec::new();
    for token in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let content = token.get("content").and_then(Value::as_str);
        let id = token.get("id").and_then(Value::as_u64);
        let (Some(content), Some(id)) = (content, id) else {
            bail!("{}: an added token lacks `content` or `id`", path.display());
        };
        let id = u32::try_from(id).with_context(|| format!("{}: added token `{content}` has id {id}, beyond 2^32", path.display()))?;
        vocab.insert(content.to_string(), id);
        added.push(content.to_string());
    }
    let pad = json.pointer("/padding/pad_token").and_then(Value::as_str).map(str::to_string);
    Ok((vocab, merges, added, pad))
}

fn load_merges_txt(path: &Path) -> Result<Vec<(String, String)>> {
    let text = crate::io::read_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(i, line)| !(line.trim().is_empty() || *i == 0 && line.starts_with("#version")))
        .take(SLOW_MERGES)
        .map(|(i, line)| {
            line.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .with_context(|| format!("{}: line {} is not a merge `a b`", path.display(), i + 1))
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::io::read_text(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn parse_vocab(value: &Value, path: &Path) -> Result<HashMap<String, u32>> {
    let map = value.as_object().with_context(|| format!("{}: the vocabulary is not a JSON object", path.display()))?;
    map.iter()
        .map(|(token, id)| {
            let id = id.as_u64().with_context(|| format!("{}: id of `{token}` is not an integer", path.display()))?;
            let id = u32::try_from(id).with_context(|| format!("{}: id {id} of `{token}` is beyond 2^32", path.display()))?;
            Ok((token.clone(), id))
        })
        .collect()
}

/// Merges as (left id, right id) -> (rank, merged id); every part must be in the vocabulary, as
/// the tokenizers crate also requires.
fn index_merges(vocab: &HashMap<String, u32>, merges: &[(String, String)]) -> Result<HashMap<(u32, u32), (u32, u32)>> {
    let id = |t: &str| vocab.get(t).copied().with_context(|| format!("merge token `{t}` is not in the vocabulary"));
    merges.iter().enumerate().map(|(rank, (a, b))| Ok(((id(a)?, id(b)?), (rank as u32, id(&format!("{a}{b}"))?)))).collect()
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_content(value: &Value) -> Option<String> {
    value.as_str().or_else(|| value.get("content")?.as_str()).map(str::to_string)
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes map to themselves, the rest to 256+n.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafeTensorsFile;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        crate::fixtures::fixtures_dir()
    }

    fn sd_tokenizer() -> ClipTokenizer {
        ClipTokenizer::from_dir(&fixtures().join("tiny-sd/tokenizer")).unwrap()
    }

    /// A fresh empty folder under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("catlora-tokenizer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reference() -> (Vec<String>, Vec<Vec<u32>>) {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
        let prompts: Vec<String> = json["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        let file = SafeTensorsFile::open(&fixtures().join("reference.safetensors")).unwrap();
        let (shape, ids) = file.i64("prompt_ids").unwrap();
        assert_eq!(shape, vec![prompts.len(), 77]);
        let rows = ids.chunks(77).map(|r| r.iter().map(|&x| x as u32).collect()).collect();
        (prompts, rows)
    }

    fn assert_matches_reference(tok: &ClipTokenizer) {
        let (prompts, expected) = reference();
        for (prompt, want) in prompts.iter().zip(&expected) {
            assert_eq!(&tok.encode_padded(prompt, tok.max_len()), want, "prompt {prompt:?}");
        }
    }

    #[test]
    fn reference_ids_from_tokenizer_json() {
        let tok = sd_tokenizer();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_len()), (49406, 49407, 49407, 77));
        assert_matches_reference(&tok);
    }

    #[test]
    fn reference_ids_from_vocab_and_merges() {
        let dir = temp_dir("slow");
        for file in ["vocab.json", "merges.txt"] {
            std::fs::copy(fixtures().join("tiny-sd/tokenizer").join(file), dir.join(file)).unwrap();
        }
        let tok = ClipTokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id(), tok.max_len()), (49406, 49407, 49407, 77));
        assert_matches_reference(&tok);
        let fast = sd_tokenizer();
        let text = "Don't  PANIC: 123 cafés <|endoftext|> ok!?";
        assert_eq!(tok.encode(text), fast.encode(text));
    }

    /// SD 2.x's tokenizer folder (vocab.json + merges.txt, pad token "!"): transformers splits
    /// the pad token out of the text, so "background!" ends in id 0, not the "!" merge 256.
    #[test]
    fn sd2_pad_token_is_split_out_as_transformers_does() {
        let tok = ClipTokenizer::from_dir(&fixtures().join("tiny-sd2-v/tokenizer")).unwrap();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 0));
        let json: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("vpred-reference.json")).unwrap()).unwrap();
        let file = SafeTensorsFile::open(&fixtures().join("vpred-reference.safetensors")).unwrap();
        let (_, ids) = file.i64("prompt_ids").unwrap();
        for (prompt, want) in json["prompts"].as_array().unwrap().iter().zip(ids.chunks(77)) {
            let want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
            assert_eq!(tok.encode_padded(prompt.as_str().unwrap(), 77), want, "prompt {prompt}");
        }
    }

    #[test]
    fn tiny_clip_tokenizer_loads() {
        let tok = ClipTokenizer::from_dir(&fixtures().join("tiny-clip")).unwrap();
        let (prompts, expected) = reference();
        assert_eq!(tok.encode_padded(&prompts[0], 77), expected[0]);
    }

    #[test]
    fn truncates_to_max_len_keeping_eos() {
        let tok = sd_tokenizer();
        let long = "a photo of a cat on a mat ".repeat(30);
        let ids = tok.encode_padded(&long, 77);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], 49407);
        assert_eq!(ids[1..76], tok.encode(&long)[..75]);
        // Short prompts are padded to exactly max_len.
        let short = tok.encode_padded("a cat", 77);
        assert_eq!(short.len(), 77);
        assert!(short[3..].iter().all(|&id| id == 49407));
    }

    #[test]
    fn known_clip_ids() {
        // Ids of openai/clip-vit-large-patch14, as seen in SD prompts.
        assert_eq!(sd_tokenizer().encode("a photo of a cat"), vec![320, 1125, 539, 320, 2368]);
    }

    #[test]
    fn normalisation_and_word_splitting() {
        let tok = sd_tokenizer();
        let id = |t: &str| tok.token_id(t).unwrap();
        // Case and runs of whitespace do not matter.
        assert_eq!(tok.encode("  A\tPhoto\n\nOF   a CAT "), tok.encode("a photo of a cat"));
        // NFD input is composed first.
        assert_eq!(tok.encode("cafe\u{301}"), tok.encode("caf\u{e9}"));
        // Digits are words of their own; contractions split off.
        assert_eq!(tok.encode("123"), vec![id("1</w>"), id("2</w>"), id("3</w>")]);
        assert_eq!(tok.encode("don't"), vec![id("don</w>"), id("'t</w>")]);
        // Punctuation runs are one word.
        assert_eq!(tok.encode("cat!?"), vec![id("cat</w>"), id("!?</w>")]);
        // Added tokens are matched in the raw text; a different case is ordinary text.
        assert_eq!(tok.encode("a<|endoftext|>b"), vec![id("a</w>"), 49407, id("b</w>")]);
        assert_eq!(tok.encode("<|startoftext|>"), vec![49406]);
        // Lowercased, it is BPE'd as the three words `<|`, `endoftext`, `|>`.
        assert_eq!(tok.encode("<|ENDOFTEXT|>"), [tok.encode("<|"), tok.encode("endoftext"), tok.encode("|>")].concat());
    }

    /// Expected ids from an independent Python port of the fast tokenizer's pipeline (NFC, `\s+`,
    /// per-character lowercase, the two split regexes, GPT-2 byte map, slow-style BPE) run on the
    /// same vocab.json/merges; it also reproduces `prompt_ids` of reference.safetensors.
    #[test]
    fn tricky_strings() {
        let tok = sd_tokenizer();
        let cases: [(&str, &[u32]); 10] = [
            ("<|ENDOFTEXT|>", &[27, 347, 40786, 4160, 91, 285]),
            ("don't stop, it's 123 caf\u{e9}s!!", &[847, 713, 1691, 267, 585, 568, 272, 273, 274, 3471, 20507, 748]),
            ("Caf\u{e9}  na\u{ef}ve   CAF\u{c9}", &[15304, 1097, 35689, 563, 15304]),
            ("\u{1f642} emoji \u{2728}", &[14860, 16327, 3531]),
            ("hello...world?!", &[3306, 678, 1002, 2835]),
            ("I'LL we've they're", &[328, 1342, 649, 1200, 889, 982]),
            ("3.14 \u{d7} 2 = 6.28", &[274, 269, 272, 275, 16165, 273, 284, 277, 269, 273, 279]),
            (
                "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30ad}\u{30b9}\u{30c8}",
                &[39121, 44353, 34002, 252, 21575, 2429, 228, 47121, 32421, 486],
            ),
            ("\u{fc}ber-stra\u{df}e \u{3a3}\u{391}\u{3a3}", &[6522, 1516, 268, 1894, 127, 253, 324, 139, 225, 138, 109, 139, 481]),
            ("x<|endoftext|>y", &[343, 49407, 344]),
        ];
        for (text, want) in cases {
            assert_eq!(tok.encode(text), want, "{text:?}");
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = temp_dir("errors");
        let err = format!("{:#}", ClipTokenizer::from_dir(&dir).err().unwrap());
        assert!(err.contains("vocab.json"), "{err}");

        std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
        let err = format!("{:#}", ClipTokenizer::from_dir(&dir).err().unwrap());
        assert!(err.contains("tokenizer.json"), "{err}");

        std::fs::write(dir.join("tokenizer.json"), r#"{"model": {"vocab": {}, "merges": [1]}}"#).unwrap();
        let err = format!("{:#}", ClipTokenizer::from_dir(&dir).err().unwrap());
        assert!(err.contains("tokenizer.json"), "{err}");

        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join("vocab.json"), "{}").unwrap();
        let err = format!("{:#}", ClipTokenizer::from_dir(&dir).err().unwrap());
        assert!(err.contains("merges.txt"), "{err}");

        std::fs::write(dir.join("tokenizer_config.json"), "[").unwrap();
        let err = format!("{:#}", ClipTokenizer::from_dir(&dir).err().unwrap());
        assert!(err.contains("tokenizer_config.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
