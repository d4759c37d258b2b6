//! Caption metrics on arbitrary candidates and references (both suites), the tokenizers they
//! use, and the CSR form of the C API.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smolcap::metrics::{score, score_csr, Suite};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Lines: candidate, then its references separated by '|'; at most 8 images.
    let mut cands = Vec::new();
    let mut refs: Vec<Vec<String>> = Vec::new();
    for line in text.lines().take(8) {
        let mut parts = line.split('|');
        cands.push(parts.next().unwrap_or("").to_string());
        refs.push(parts.map(String::from).collect());
    }
    for suite in [Suite::Seed, Suite::Coco] {
        if let Ok(s) = score(&cands, &refs, suite) {
            for i in 0..s.len() {
                let _ = s.image(i);
            }
        }
    }
    let _ = smolcap::metrics::tokenize::tokenize_13a(&text);
    let _ = smolcap::metrics::ptb::coco_tokenize(&text);
    // CSR offsets taken from the raw bytes (often inconsistent on purpose).
    let flat: Vec<&str> = refs.iter().flatten().map(String::as_str).collect();
    let c: Vec<&str> = cands.iter().map(String::as_str).collect();
    let offs: Vec<usize> = data
        .iter()
        .take(c.len() + 1)
        .map(|&b| usize::from(b % 16))
        .collect();
    let _ = score_csr(&c, &flat, &offs, Suite::Seed);
});
