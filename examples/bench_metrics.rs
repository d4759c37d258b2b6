//! Times `smolcap::metrics::score` on a caption corpus (JSON `{"cands": [...], "refs": [[...]]}`,
//! e.g. written by `tools/reference/bench_metrics.py`) and prints one JSON line of seconds.
//!
//!     cargo run --release --example bench_metrics -- corpus.json [repeats]

use std::time::Instant;

use smolcap::metrics::{score, Suite};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: bench_metrics CORPUS.json [repeats]");
        std::process::exit(2);
    };
    let repeats: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1)
    });
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let cands = strs(&v["cands"]);
    let refs: Vec<Vec<String>> = v["refs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(strs)
        .collect();
    // warm the embedded WordNet / Punkt tables once (their decoding is reported separately)
    let t = Instant::now();
    score(&cands[..1], &refs[..1], Suite::Seed).expect("score");
    let warm = t.elapsed().as_secs_f64();
    let mut out = vec![
        format!("\"images\":{}", cands.len()),
        format!("\"load_s\":{warm:.4}"),
    ];
    for suite in [Suite::Seed, Suite::Coco] {
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let t = Instant::now();
            let s = score(&cands, &refs, suite).expect("score");
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(s);
        }
        out.push(format!("\"{}_s\":{best:.4}", suite.name()));
    }
    println!("{{{}}}", out.join(","));
}
