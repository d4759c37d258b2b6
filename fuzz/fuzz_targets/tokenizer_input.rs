//! The tokenizer: encoding arbitrary text (prompt and caption paths), decoding arbitrary ids
//! (in and out of the vocabulary) incrementally, and loading damaged tokenizer.json files.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smolcap::tokenizer::{IncrementalDecoder, TextTokenizer};

fn tok() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        TextTokenizer::from_file(&common::fixture("tiny-idefics3/tokenizer.json")).expect("fixture")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let t = tok();
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let _ = t.encode(&text);
            if let Ok(ids) = t.encode_plain(&text) {
                let _ = t.decode(&ids, true);
            }
        }
        1 => {
            let vocab = t.vocab_size() as u32 + 8;
            let mut d = IncrementalDecoder::new(mode & 8 == 0);
            let mut text = String::new();
            for c in rest.chunks(2) {
                let id = u32::from(u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)])) % vocab;
                if let Ok(Some(p)) = d.push(t, id) {
                    text.push_str(&p);
                }
            }
            if let Ok(r) = d.finish(t) {
                text.push_str(&r);
            }
        }
        _ => {
            let p = common::scratch().join("tokenizer.json");
            if std::fs::write(&p, rest).is_ok() {
                if let Ok(t2) = TextTokenizer::from_file(&p) {
                    let _ = t2.encode("a photo of <image> a cat");
                }
            }
        }
    }
});
