//! Trains the byte-level BPE tokenizer and lays it out like the real family's.
//!
//! Llama 3 and Qwen 2.5 both use GPT-2 style byte-level BPE behind a regex
//! split; they differ in the regex (Llama groups up to three digits, Qwen
//! splits every digit), the normaliser (Qwen applies NFC) and the
//! post-processor (Llama prepends `<|begin_of_text|>` to plain encodes).

use super::Arch;
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerImpl,
};

type Tok = TokenizerImpl<
    BPE,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// Llama 3's pre-tokenizer regex (tiktoken's cl100k pattern).
const LLAMA_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's pre-tokenizer regex: as Llama 3's, but one digit per pre-token.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Merges go in order of frequency, so allowing pairs seen once only adds
/// tokens after every frequent pair is merged; it lets a narrow corpus fill
/// the vocabulary instead of leaving embedding rows unused.
const MIN_PAIR_FREQUENCY: u64 = 0;

/// A trained tokenizer: its `tokenizer.json` text and its special token ids.
pub(crate) struct Trained {
    pub(crate) json: String,
    pub(crate) ids: SpecialIds,
}

/// Ids of the family's special tokens, by content.
#[derive(Clone, Debug)]
pub(crate) struct SpecialIds(BTreeMap<String, u32>);

impl SpecialIds {
    /// The id of `token`, which must be one of the family's special tokens.
    pub(crate) fn get(&self, token: &str) -> u32 {
        self.0[token]
    }

    /// `(id, content)` pairs in id order.
    pub(crate) fn by_id(&self) -> Vec<(u32, &str)> {
        let mut out: Vec<(u32, &str)> = self.0.iter().map(|(t, &id)| (id, t.as_str())).collect();
        out.sort_unstable();
        out
    }
}

/// Trains on `text` so that BPE tokens plus special tokens fit in `vocab_size`.
pub(crate) fn train(arch: Arch, vocab_size: usize, text: &str) -> Result<Trained> {
    let specials = arch.special_tokens();
    let mut tok = untrained(arch)?;
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - specials.len())
        .min_frequency(MIN_PAIR_FREQUENCY)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    // Chunks end at blank lines, so "\n\n" stays visible to the trainer.
    tok.train(&mut trainer, text.split_inclusive("\n\n"))
        .map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    let added: Vec<AddedToken> = specials
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(&added);
    let ids = special_ids(&tok, specials)?;
    tok.with_post_processor(Some(post_processor(arch, &ids)?));
    let total = tok.get_vocab_size(true);
    if total > vocab_size {
        anyhow::bail!("trained tokenizer has {total} tokens, more than vocab_size {vocab_size}");
    }
    let json = tok
        .to_string(true)
        .map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?;
    Ok(Trained { json, ids })
}

fn untrained(arch: Arch) -> Result<Tok> {
    let (regex, ignore_merges, trim_offsets) = match arch {
        Arch::Llama => (LLAMA_SPLIT, true, true),
        Arch::Qwen2 => (QWEN2_SPLIT, false, false),
    };
    let model = BPE::builder()
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow!("cannot build the BPE model: {e}"))?;
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("bad pre-tokenizer regex: {e}"))?;
    let pre = PreSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, trim_offsets, false)),
    ]);
    let mut tok = Tok::new(model);
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(decoder(arch))));
    if arch == Arch::Qwen2 {
        tok.with_normalizer(Some(NormalizerWrapper::NFC(NFC)));
    }
    Ok(tok)
}

/// The ByteLevel decoder flags as each family's `tokenizer.json` spells them.
fn decoder(arch: Arch) -> ByteLevel {
    match arch {
        Arch::Llama => ByteLevel::new(true, true, true),
        Arch::Qwen2 => ByteLevel::new(false, false, false),
    }
}

/// Llama 3 adds bos through TemplateProcessing; Qwen 2 adds nothing.
fn post_processor(arch: Arch, ids: &SpecialIds) -> Result<PostProcessorWrapper> {
    match arch {
        Arch::Qwen2 => Ok(PostProcessorWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        ))),
        Arch::Llama => {
            let bos = "<|begin_of_text|>";
            let template = TemplateProcessing::builder()
                .try_single(format!("{bos} $A"))
                .and_then(|b| b.try_pair(format!("{bos} $A {bos}:1 $B:1")))
                .map_err(|e| anyhow!("bad post-processor template: {e}"))?
                .special_tokens(vec![(bos, ids.get(bos))])
                .build()
                .map_err(|e| anyhow!("cannot build the post-processor: {e}"))?;
            Ok(PostProcessorWrapper::Sequence(PostSequence::new(vec![
                PostProcessorWrapper::ByteLevel(ByteLevel::new(true, false, true)),
                PostProcessorWrapper::Template(template),
            ])))
        }
    }
}

fn special_ids(tok: &Tok, specials: &[&str]) -> Result<SpecialIds> {
    let mut map = BTreeMap::new();
    for s in specials {
        let id = tok
            .token_to_id(s)
            .ok_or_else(|| anyhow!("special token {s} was not added"))?;
        map.insert(s.to_string(), id);
    }
    Ok(SpecialIds(map))
}
