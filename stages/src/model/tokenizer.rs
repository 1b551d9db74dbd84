//! The `bpe` stage and the promoter encoding the model reads.
//!
//! Tokenizers are byte-level BPE, as FloraBERT's: `<s>`=0, `</s>`=1, `<pad>`=2, `<unk>`=3,
//! `<mask>`=4, then the 256 byte symbols, then merges. `vocab_size` counts the tokens besides the
//! five specials, byte symbols included (5,000 in the study: 256 bytes and 4,744 merges, so 5,005
//! in all, as in the published FloraBERT tokenizer).
//!
//! A promoter is encoded as `<s>` + its tokens + `</s>`, left-padded with `<pad>` to `max_len`, so
//! that every sequence ends at its TSS at the same position. A sequence too long for `max_len`
//! loses tokens at its 5' (far) end, never at the TSS end, and the number lost is counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::Context;

/// The special tokens, in id order.
pub const SPECIALS: [&str; 5] = ["<s>", "</s>", "<pad>", "<unk>", "<mask>"];
/// `<s>`
pub const BOS: u32 = 0;
/// `</s>`
pub const EOS: u32 = 1;
/// `<pad>`
pub const PAD: u32 = 2;
/// `<unk>`
pub const UNK: u32 = 3;
/// `<mask>`
pub const MASK: u32 = 4;

/// Why tokenizing failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer could not be loaded.
    #[error("tokenizer {path}: {message}")]
    Load {
        /// Where from.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Training or encoding failed.
    #[error("bpe: {0}")]
    Other(String),
}

/// Params of the `bpe` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Tokens besides the five specials (default 5000).
    pub vocab_size: usize,
    /// A merge must occur at least this often (default 2).
    pub min_frequency: u64,
    /// Encoded length, specials and padding included, for the statistics (default 256).
    pub max_len: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            vocab_size: 5000,
            min_frequency: 2,
            max_len: 256,
        }
    }
}

/// What the tokenizer does to the corpus.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Vocabulary size, specials included.
    pub vocab: usize,
    /// Sequences in the corpus.
    pub sequences: usize,
    /// Tokens per 1,000 bases.
    pub tokens_per_kb: f64,
    /// Share of sequences longer than `max_len` tokens (truncated at their 5' end).
    pub truncated_share: f64,
    /// The `max_len` used.
    pub max_len: usize,
}

fn bytelevel() -> ByteLevel {
    // add_prefix_space=false, trim_offsets=true, use_regex=true: FloraBERT's settings.
    ByteLevel::new(false, true, true)
}

fn specials() -> Vec<AddedToken> {
    SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect()
}

/// Trains a byte-level BPE tokenizer on `sequences`.
pub fn train<I, S>(sequences: I, p: &Params) -> Result<Tokenizer, TokenizerError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(p.vocab_size + SPECIALS.len())
        .min_frequency(p.min_frequency)
        .special_tokens(specials())
        .initial_alphabet(alphabet)
        .build()
        .into();
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(bytelevel()));
    tok.with_decoder(Some(bytelevel()));
    tok.train(&mut trainer, sequences)
        .map_err(|e| TokenizerError::Other(e.to_string()))?;
    tok.add_special_tokens(specials())
        .map_err(|e| TokenizerError::Other(e.to_string()))?;
    check_specials(&tok, Path::new("<trained>"))?;
    Ok(tok)
}

fn check_specials(tok: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    for (i, s) in SPECIALS.iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            return Err(TokenizerError::Load {
                path: path.to_path_buf(),
                message: format!(
                    "special token {s} must have id {i}, has {:?}",
                    tok.token_to_id(s)
                ),
            });
        }
    }
    Ok(())
}

/// Loads a tokenizer: a `tokenizer.json`, or a folder holding one, or `vocab.json` + `merges.txt`
/// (a byte-level BPE as saved by HuggingFace's ByteLevelBPETokenizer).
pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let err = |message: String| TokenizerError::Load {
        path: path.to_path_buf(),
        message,
    };
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    let tok = if file.is_file() {
        Tokenizer::from_file(&file).map_err(|e| err(e.to_string()))?
    } else if path.join("vocab.json").is_file() && path.join("merges.txt").is_file() {
        let bpe = BPE::from_file(
            &path.join("vocab.json").display().to_string(),
            &path.join("merges.txt").display().to_string(),
        )
        .build()
        .map_err(|e| err(e.to_string()))?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(bytelevel()));
        tok.with_decoder(Some(bytelevel()));
        tok.add_special_tokens(specials())
            .map_err(|e| err(e.to_string()))?;
        tok
    } else {
        return Err(err("no tokenizer.json, nor vocab.json + merges.txt".into()));
    };
    check_specials(&tok, path)?;
    Ok(tok)
}

/// The token ids of a sequence, without specials.
pub fn tokens(tok: &Tokenizer, seq: &str) -> Result<Vec<u32>, TokenizerError> {
    Ok(tok
        .encode(seq, false)
        .map_err(|e| TokenizerError::Other(e.to_string()))?
        .get_ids()
        .to_vec())
}

/// `<s>` + tokens + `</s>`, left-padded to `max_len`; keeps the 3' (TSS) end of a long sequence.
/// Returns the ids and how many tokens were cut from the 5' end.
pub fn frame(tokens: &[u32], max_len: usize) -> (Vec<u32>, usize) {
    assert!(max_len >= 2, "max_len must leave room for <s> and </s>");
    let room = max_len - 2;
    let cut = tokens.len().saturating_sub(room);
    let kept = &tokens[cut..];
    let mut out = Vec::with_capacity(max_len);
    out.resize(max_len - kept.len() - 2, PAD);
    out.push(BOS);
    out.extend_from_slice(kept);
    out.push(EOS);
    (out, cut)
}

/// Runs the stage: input `corpus` (a FASTA file or a folder of promoter sets).
pub fn run(p: &Params, ctx: &Context) -> Result<Summary, String> {
    let corpus = ctx
        .inputs
        .get("corpus")
        .ok_or("bpe: needs an input `corpus` (FASTA)")?;
    if p.vocab_size <= 256 || p.max_len < 3 {
        return Err(format!(
            "bpe: vocab_size {} must exceed the 256 byte symbols (5000 in the study: 256 bytes + 4,744 merges), and max_len ({}) must be at least 3",
            p.vocab_size, p.max_len
        ));
    }
    let mut seqs: Vec<String> = Vec::new();
    for f in crate::splits::corpus::fasta_files(corpus)? {
        for r in crate::genomics::records::read_all(&f)? {
            seqs.push(String::from_utf8_lossy(&r.seq).into_owned());
        }
    }
    if seqs.is_empty() {
        return Err(format!("bpe: {} holds no sequences", corpus.display()));
    }
    let tok = train(seqs.iter(), p).map_err(|e| e.to_string())?;
    tok.save(ctx.out.join("tokenizer.json"), true)
        .map_err(|e| format!("bpe: {e}"))?;
    let (mut n_tokens, mut bases, mut truncated) = (0usize, 0usize, 0usize);
    for s in &seqs {
        let t = tokens(&tok, s).map_err(|e| e.to_string())?;
        n_tokens += t.len();
        bases += s.len();
        if frame(&t, p.max_len).1 > 0 {
            truncated += 1;
        }
    }
    let summary = Summary {
        vocab: tok.get_vocab_size(true),
        sequences: seqs.len(),
        tokens_per_kb: 1000.0 * n_tokens as f64 / bases.max(1) as f64,
        truncated_share: truncated as f64 / seqs.len() as f64,
        max_len: p.max_len,
    };
    std::fs::write(
        ctx.out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("serializes"),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "bpe: vocab {}, {:.1} tokens per kb, {:.1}% of {} sequences truncated at max_len {}",
        summary.vocab,
        summary.tokens_per_kb,
        100.0 * summary.truncated_share,
        summary.sequences,
        p.max_len
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_left_pads_and_keeps_the_tss_end() {
        assert_eq!(frame(&[10, 11], 6), (vec![PAD, PAD, BOS, 10, 11, EOS], 0));
        assert_eq!(
            frame(&[10, 11, 12, 13, 14], 5),
            (vec![BOS, 12, 13, 14, EOS], 2)
        );
        assert_eq!(frame(&[], 3), (vec![PAD, BOS, EOS], 0));
    }

    #[test]
    fn trains_a_tokenizer_with_the_specials_first() {
        let mut rng = crate::rng::Rng::new(1);
        let seqs: Vec<String> = (0..200)
            .map(|_| {
                let mut s: String = (0..300)
                    .map(|_| ['A', 'C', 'G', 'T'][rng.below(4)])
                    .collect();
                s.insert_str(100, "TATAAAGGCCACGTGG");
                s
            })
            .collect();
        let tok = train(
            seqs.iter(),
            &Params {
                vocab_size: 300,
                ..Params::default()
            },
        )
        .unwrap();
        assert_eq!(tok.get_vocab_size(true), 305);
        for (i, s) in SPECIALS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some(i as u32));
        }
        let ids = tokens(&tok, &seqs[0]).unwrap();
        assert!(
            ids.len() < 300,
            "merges shorten the sequence: {}",
            ids.len()
        );
        let decoded = tok.decode(&ids, false).unwrap();
        assert_eq!(decoded, seqs[0]);
        // Saved and loaded again, it encodes the same.
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path().join("tokenizer.json"), false).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(tokens(&back, &seqs[0]).unwrap(), ids);
    }

    /// The two published FloraBERT tokenizers reproduce their golden encodings exactly.
    #[test]
    fn published_tokenizers_match_their_golden_encodings() {
        let Some(data) =
            crate::testing::shared_data("published_tokenizers_match_their_golden_encodings")
        else {
            return;
        };
        let dir = data.join("florabert_tokenizers");
        if !dir.is_dir() {
            crate::testing::skipped(&format!(
                "published_tokenizers_match_their_golden_encodings: {} is missing",
                dir.display()
            ));
            return;
        }
        for (name, golden) in [
            (
                "shanmukh0504_vocab5005",
                "golden_shanmukh0504_vocab5005.jsonl",
            ),
            (
                "gurveervirk_vocab5261",
                "golden_gurveervirk_vocab5261.jsonl",
            ),
        ] {
            let tok = load(&dir.join(name)).unwrap();
            let text = std::fs::read_to_string(dir.join(golden)).unwrap();
            let mut n = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let g: serde_json::Value = serde_json::from_str(line).unwrap();
                let enc = tok.encode(g["seq"].as_str().unwrap(), false).unwrap();
                let ids: Vec<u64> = g["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                let got: Vec<u64> = enc.get_ids().iter().map(|&i| i as u64).collect();
                assert_eq!(got, ids, "{name}: {}", g["id"]);
                let toks: Vec<&str> = g["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(enc.get_tokens(), toks.as_slice(), "{name}: {}", g["id"]);
                n += 1;
            }
            assert_eq!(n, 53, "{name}");
        }
    }
}
