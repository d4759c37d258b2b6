//! Token generation over a stepping model: greedy, sampling and beam search, with stop tokens,
//! a cancellation flag and a per-token callback.

pub mod beam;
pub mod sampling;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Error, Result};
pub use beam::{BeamParams, EarlyStopping};
pub use sampling::SampleParams;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// A token drawn after temperature/top-k/top-p, from a seeded generator.
    Sample {
        /// The warpers.
        params: SampleParams,
        /// RNG seed (same seed, same tokens).
        seed: u64,
    },
    /// Beam search as `generate(num_beams=…)`.
    Beam(BeamParams),
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens generated per sequence (stop token included).
    pub max_new_tokens: usize,
    /// Token choice.
    pub strategy: Strategy,
    /// `repetition_penalty` (1.0 = off); applies to prompt and generated tokens as in transformers.
    pub repetition_penalty: f32,
    /// Stop tokens are masked until this many tokens exist (`min_new_tokens`).
    pub min_new_tokens: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 48,
            strategy: Strategy::Greedy,
            repetition_penalty: 1.0,
            min_new_tokens: 0,
        }
    }
}

impl GenerateParams {
    /// Checks ranges; errors name the parameter.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidArgument(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            )));
        }
        match self.strategy {
            Strategy::Greedy => {}
            Strategy::Sample { params, .. } => {
                if !(params.temperature.is_finite() && params.temperature > 0.0) {
                    return Err(Error::InvalidArgument(format!(
                        "temperature must be > 0, got {}",
                        params.temperature
                    )));
                }
                if !(params.top_p > 0.0 && params.top_p <= 1.0) {
                    return Err(Error::InvalidArgument(format!(
                        "top_p must be in (0, 1], got {}",
                        params.top_p
                    )));
                }
            }
            Strategy::Beam(b) => {
                if b.num_beams == 0 || b.num_beams > 64 {
                    return Err(Error::InvalidArgument(format!(
                        "num_beams must be in 1..=64, got {}",
                        b.num_beams
                    )));
                }
                if !b.length_penalty.is_finite() {
                    return Err(Error::InvalidArgument(
                        "length_penalty must be finite".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A model that extends each row of its batch by one token per call.
pub trait StepModel {
    /// Appends `tokens[r]` to row r and returns next-token logits per row.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>>;
    /// Rebuilds the batch from rows `rows` of the current one (duplicates allowed).
    fn select_rows(&mut self, rows: &[u32]) -> Result<()>;
}

/// Called with (row, token) for each generated token; `Break` stops that row.
pub type TokenCallback<'a> = dyn FnMut(usize, u32) -> ControlFlow<()> + 'a;

/// Generates continuations for every row.
#[allow(clippy::too_many_arguments)]
///
/// `first_logits[r]` are the logits after row r's prompt, `prompts[r]` its tokens (for the
/// repetition penalty). Returns the generated ids per row, including a final stop token.
pub fn generate(
    model: &mut dyn StepModel,
    first_logits: Vec<Vec<f32>>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    stop_tokens: &[u32],
    pad_token: u32,
    cancel: &AtomicBool,
    on_token: &mut TokenCallback<'_>,
) -> Result<Vec<Vec<u32>>> {
    params.validate()?;
    match params.strategy {
        Strategy::Beam(b) => beam::beam_search(
            model,
            first_logits,
            prompts,
            params,
            &b,
            stop_tokens,
            cancel,
            on_token,
        ),
        Strategy::Greedy => sequential(
            model,
            first_logits,
            prompts,
            params,
            None,
            stop_tokens,
            pad_token,
            cancel,
            on_token,
        ),
        Strategy::Sample { params: sp, seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            sequential(
                model,
                first_logits,
                prompts,
                params,
                Some((sp, &mut rng)),
                stop_tokens,
                pad_token,
                cancel,
                on_token,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sequential(
    model: &mut dyn StepModel,
    mut logits: Vec<Vec<f32>>,
    prompts: &[Vec<u32>],
    params: &GenerateParams,
    mut sampler: Option<(SampleParams, &mut StdRng)>,
    stop_tokens: &[u32],
    pad_token: u32,
    cancel: &AtomicBool,
    on_token: &mut TokenCallback<'_>,
) -> Result<Vec<Vec<u32>>> {
    let rows = logits.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut seen: Vec<Vec<u32>> = prompts.to_vec();
    let mut done = vec![false; rows];
    for step in 0..params.max_new_tokens {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let mut next = vec![pad_token; rows];
        for r in 0..rows {
            if done[r] {
                continue;
            }
            let l = &mut logits[r];
            sampling::apply_repetition_penalty(l, &seen[r], params.repetition_penalty);
            if step < params.min_new_tokens {
                sampling::mask_tokens(l, stop_tokens);
            }
            let tok = match sampler.as_mut() {
                None => sampling::argmax(l),
                Some((sp, rng)) => {
                    sampling::warp(l, sp);
                    sampling::sample(l, rng)
                }
            };
            next[r] = tok;
            out[r].push(tok);
            seen[r].push(tok);
            if stop_tokens.contains(&tok) || on_token(r, tok).is_break() {
                done[r] = true;
            }
        }
        if done.iter().all(|&d| d) || step + 1 == params.max_new_tokens {
            break;
        }
        logits = model.step(&next)?;
    }
    Ok(out)
}
