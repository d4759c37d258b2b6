//! The model's `tokenizer.json` tokenizer plus a UTF-8-safe incremental detokenizer for streaming.

use std::path::Path;

use crate::error::{Error, Result};

/// Wraps a `tokenizers::Tokenizer` with the lookups captioning needs.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::fsio::read_limited(path, crate::fsio::MAX_TOKENIZER_BYTES)?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a `tokenizer.json`; `path` is only used in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::format(path, format!("invalid tokenizer: {e}")))?;
        Ok(Self { inner })
    }

    /// Encodes `text` with the tokenizer's own special-token handling (as `tokenizer(text)` does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::InvalidArgument(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `text` without adding any special tokens (for text appended to a prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::InvalidArgument(format!("tokenizer: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids, dropping special tokens when `skip_special` (as `skip_special_tokens=True`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Internal(format!("tokenizer decode: {e}")))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a growing list of token ids into text pieces that never split a UTF-8 character.
///
/// Each piece is the difference between successive full decodes, so the concatenation of the
/// pieces plus `finish()` always equals `decode(all ids)`.
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    emitted: String,
    skip_special: bool,
}

impl IncrementalDecoder {
    /// A decoder with no tokens yet.
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            emitted: String::new(),
            skip_special,
        }
    }

    /// Adds one token and returns the newly completed text, if any.
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let full = tok.decode(&self.ids, self.skip_special)?;
        // A trailing replacement character means a multi-byte character is still incomplete.
        if full.ends_with('\u{FFFD}')
            || full.len() <= self.emitted.len()
            || !full.starts_with(&self.emitted)
        {
            return Ok(None);
        }
        let new = full[self.emitted.len()..].to_string();
        self.emitted = full;
        Ok(Some(new))
    }

    /// The text not yet returned by `push` (e.g. a character left incomplete at the end).
    pub fn finish(&mut self, tok: &TextTokenizer) -> Result<String> {
        let full = tok.decode(&self.ids, self.skip_special)?;
        let rest = match full.strip_prefix(&self.emitted) {
            Some(r) => r.to_string(),
            None => String::new(),
        };
        self.emitted = full;
        Ok(rest)
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
