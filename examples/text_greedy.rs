//! Greedy text-only generation from a raw prompt (no image): the smolcap side of the check that
//! our tokens equal llama.cpp's on the same GGUF (tools/reference/llama_greedy_tokens.cpp).
//!
//!     cargo run --release --example text_greedy -- MODEL N_TOKENS PROMPT
//!
//! Prints "prompt: ids..." and "greedy: ids...", as the llama.cpp tool does.

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

use smolcap::generate::{GenerateParams, Strategy};
use smolcap::processor::PromptMode;
use smolcap::{CaptionOptions, LoadOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: text_greedy MODEL N_TOKENS PROMPT".into());
    }
    let model = Model::load(&args[1], &LoadOptions::default())?;
    let opts = CaptionOptions {
        prompt: args[3].clone(),
        mode: PromptMode::Raw,
        params: GenerateParams {
            max_new_tokens: args[2].parse()?,
            strategy: Strategy::Greedy,
            ..GenerateParams::default()
        },
        ..CaptionOptions::default()
    };
    let prepared = model.prepare(&[], &opts)?;
    let ids: Vec<String> = prepared.input_ids.iter().map(u32::to_string).collect();
    println!("prompt: {}", ids.join(" "));
    let mut noop = |_: usize, _: &str| ControlFlow::Continue(());
    let c = model.caption(&[vec![]], &opts, &AtomicBool::new(false), &mut noop)?;
    let out: Vec<String> = c[0].token_ids.iter().map(u32::to_string).collect();
    println!("greedy: {}", out.join(" "));
    Ok(())
}
