//! LoRA adapters: PEFT adapter directories (`peft`), and the set of adapters active in one
//! forward pass (`LoraSet`), applied as `y = W x + b + Σ s·scale·B(A x)` without touching `W`.

pub mod peft;

use std::collections::HashMap;

use candle_core::Tensor;

use crate::error::Result;

/// One low-rank update of a linear module.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// Multiplier of `B A x`: the adapter's alpha/r (or alpha/√r) times the caller's weight.
    pub scale: f64,
}

/// Per-module LoRA updates and weight replacements (`modules_to_save`) for one forward pass.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    pairs: HashMap<String, Vec<LoraPair>>,
    replace: HashMap<String, (Tensor, Option<Tensor>)>,
}

impl LoraSet {
    /// No adapter: the base model.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether nothing is active.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.replace.is_empty()
    }

    /// Adds a low-rank update to module `name` (a checkpoint module path).
    pub fn push(&mut self, name: &str, pair: LoraPair) {
        self.pairs.entry(name.to_string()).or_default().push(pair);
    }

    /// Replaces the weight (and bias) of module `name`.
    pub fn replace(&mut self, name: &str, weight: Tensor, bias: Option<Tensor>) {
        self.replace.insert(name.to_string(), (weight, bias));
    }

    /// Updates for `name`.
    pub fn pairs(&self, name: &str) -> &[LoraPair] {
        self.pairs.get(name).map_or(&[], Vec::as_slice)
    }

    /// Replacement weight and bias for `name`.
    pub fn replacement(&self, name: &str) -> Option<&(Tensor, Option<Tensor>)> {
        self.replace.get(name)
    }

    /// Module names with updates or replacements.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.pairs
            .keys()
            .chain(self.replace.keys())
            .map(String::as_str)
    }
}

/// Adds `Σ scale · (x Aᵀ) Bᵀ` to `y`, with `x` `[rows, in]` and `y` `[rows, out]`.
pub fn apply(x: &Tensor, y: Tensor, pairs: &[LoraPair]) -> Result<Tensor> {
    let mut y = y;
    for p in pairs {
        let a = p.a.to_dtype(x.dtype())?;
        let b = p.b.to_dtype(x.dtype())?;
        let d = x.matmul(&a.t()?)?.matmul(&b.t()?)?;
        y = (y + (d * p.scale)?)?;
    }
    Ok(y)
}
