//! PEFT LoRA adapter directories (`adapter_config.json` + `adapter_model.safetensors`), loaded
//! as peft writes them and checked against the model they are applied to.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::{LoraPair, LoraSet};
use crate::config::ConfigLimits;
use crate::error::{Error, Result};
use crate::model::weights::Weights;
use crate::model::Idefics3;

/// Largest LoRA rank accepted by default (a bound checked before allocating; see
/// [`crate::config::ConfigLimits::max_adapter_rank`]).
pub const MAX_RANK: usize = crate::config::DEFAULT_MAX_ADAPTER_RANK;

/// Which modules an adapter targets: a list of name suffixes or one regular expression.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Matches a module whose name equals an entry or ends with `.` + entry.
    List(Vec<String>),
    /// Matches a module whose full name matches the expression (Python `re.fullmatch`).
    Regex(String),
}

/// The fields of `adapter_config.json` that change the math.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub lora_alpha: f64,
    /// Targeted modules.
    pub target_modules: TargetModules,
    /// Scale alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    /// Dropout used in training (no effect at inference).
    pub lora_dropout: f64,
    /// Modules stored whole in the adapter.
    pub modules_to_save: Vec<String>,
    /// Per-module rank overrides (regex key → rank).
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module alpha overrides (regex key → alpha).
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only these layer indices were adapted (None = all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// The base model the adapter was trained on, as recorded by peft.
    pub base_model_name_or_path: Option<String>,
    /// Whether the adapter was trained on a 4-bit (QLoRA) base, when the config records it.
    pub trained_on_4bit: bool,
    /// The raw JSON, kept so an adapter written back keeps unknown fields.
    pub raw: Value,
}

impl AdapterConfig {
    /// Parses `adapter_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_limited(path, MAX_RANK)
    }

    /// [`AdapterConfig::from_file`] accepting ranks up to `max_rank`.
    pub fn from_file_limited(path: &Path, max_rank: usize) -> Result<Self> {
        let text = crate::fsio::read_text_limited(path, crate::fsio::MAX_JSON_BYTES)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
        Self::from_json_limited(v, path, max_rank)
    }

    /// Builds the config from parsed JSON; `path` names the file in errors.
    pub fn from_json(v: Value, path: &Path) -> Result<Self> {
        Self::from_json_limited(v, path, MAX_RANK)
    }

    /// [`AdapterConfig::from_json`] accepting ranks up to `max_rank`.
    pub fn from_json_limited(v: Value, path: &Path, max_rank: usize) -> Result<Self> {
        let bad = |k: &str, m: String| Error::format(path, format!("{k}: {m}"));
        let o = v
            .as_object()
            .ok_or_else(|| bad("(root)", "expected an object".into()))?;
        if let Some(t) = o.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(Error::Unsupported(format!(
                    "{}: peft_type {t:?} (only LORA adapters are supported)",
                    path.display()
                )));
            }
        }
        for flag in ["use_dora", "use_qalora", "lora_bias"] {
            if o.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(Error::Unsupported(format!(
                    "{}: {flag} = true (DoRA / QA-LoRA / LoRA bias adapters are not supported)",
                    path.display()
                )));
            }
        }
        if let Some(b) = o.get("bias").and_then(Value::as_str) {
            if b != "none" {
                return Err(Error::Unsupported(format!(
                    "{}: bias = {b:?} (only \"none\" is supported)",
                    path.display()
                )));
            }
        }
        if let Some(tp) = o.get("target_parameters") {
            if !tp.is_null() && tp.as_array().is_none_or(|a: &Vec<Value>| !a.is_empty()) {
                return Err(Error::Unsupported(format!(
                    "{}: target_parameters",
                    path.display()
                )));
            }
        }
        let r = o
            .get("r")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))?;
        if r == 0 || r > max_rank as u64 {
            return Err(Error::Limit(format!(
                "{}: r: rank {r} is outside 1..={max_rank}",
                path.display()
            )));
        }
        let r = r as usize;
        let lora_alpha = match o.get("lora_alpha") {
            None | Some(Value::Null) => 8.0,
            Some(x) => x
                .as_f64()
                .filter(|a| a.is_finite())
                .ok_or_else(|| bad("lora_alpha", format!("expected a number, got {x}")))?,
        };
        let target_modules = match o.get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(a)) => TargetModules::List(
                a.iter()
                    .map(|x| {
                        x.as_str().map(String::from).ok_or_else(|| {
                            bad("target_modules", format!("expected strings, got {x}"))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            other => {
                return Err(bad(
                    "target_modules",
                    format!("expected a list or a string, got {other:?}"),
                ))
            }
        };
        if let TargetModules::Regex(re) = &target_modules {
            regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| bad("target_modules", format!("invalid regex {re:?}: {e}")))?;
        }
        let strings = |k: &str| -> Result<Vec<String>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .ok_or_else(|| bad(k, format!("expected strings, got {x}")))
                    })
                    .collect(),
                Some(x) => Err(bad(k, format!("expected a list, got {x}"))),
            }
        };
        let mut rank_pattern = BTreeMap::new();
        if let Some(Value::Object(m)) = o.get("rank_pattern") {
            for (k, x) in m {
                let n = x
                    .as_u64()
                    .ok_or_else(|| bad("rank_pattern", format!("{k}: expected an integer")))?;
                if n == 0 || n > max_rank as u64 {
                    return Err(Error::Limit(format!(
                        "{}: rank_pattern: {k}: rank {n} is outside 1..={max_rank}",
                        path.display()
                    )));
                }
                rank_pattern.insert(k.clone(), n as usize);
            }
        }
        let mut alpha_pattern = BTreeMap::new();
        if let Some(Value::Object(m)) = o.get("alpha_pattern") {
            for (k, x) in m {
                let a = x
                    .as_f64()
                    .filter(|a| a.is_finite())
                    .ok_or_else(|| bad("alpha_pattern", format!("{k}: expected a number")))?;
                alpha_pattern.insert(k.clone(), a);
            }
        }
        for (field, keys) in [
            ("rank_pattern", rank_pattern.keys().collect::<Vec<_>>()),
            ("alpha_pattern", alpha_pattern.keys().collect::<Vec<_>>()),
        ] {
            for k in keys {
                regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                    .map_err(|e| bad(field, format!("{k}: invalid regex: {e}")))?;
            }
        }
        let layers_to_transform = match o.get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(vec![n
                .as_u64()
                .ok_or_else(|| bad("layers_to_transform", format!("{n}")))?
                as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| {
                        x.as_u64()
                            .map(|n| n as usize)
                            .ok_or_else(|| bad("layers_to_transform", format!("{x}")))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(x) => {
                return Err(bad(
                    "layers_to_transform",
                    format!("expected a list, got {x}"),
                ))
            }
        };
        // peft records the base model's quantization only indirectly; the seed's QLoRA runs
        // write our own marker or a `quantization_config`-style hint in the config.
        let trained_on_4bit = o
            .get("smolcap_base_quantization")
            .and_then(Value::as_str)
            .is_some_and(|q| q.contains("4"))
            || o.get("base_model_quantization")
                .and_then(Value::as_str)
                .is_some_and(|q| q.contains("4bit"));
        Ok(Self {
            r,
            lora_alpha,
            target_modules,
            use_rslora: o
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            lora_dropout: o.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            modules_to_save: strings("modules_to_save")?,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            base_model_name_or_path: o
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(String::from),
            trained_on_4bit,
            raw: v.clone(),
        })
    }

    /// Rank and alpha of module `name` after `rank_pattern` / `alpha_pattern`.
    pub fn rank_alpha(&self, name: &str) -> Result<(usize, f64)> {
        let r = match pattern_match(self.rank_pattern.keys(), name)? {
            Some(k) => self.rank_pattern[k],
            None => self.r,
        };
        let a = match pattern_match(self.alpha_pattern.keys(), name)? {
            Some(k) => self.alpha_pattern[k],
            None => self.lora_alpha,
        };
        Ok((r, a))
    }

    /// The LoRA multiplier of module `name`: alpha/r, or alpha/√r with rsLoRA.
    pub fn scale(&self, name: &str) -> Result<f64> {
        let (r, a) = self.rank_alpha(name)?;
        Ok(if self.use_rslora {
            a / (r as f64).sqrt()
        } else {
            a / r as f64
        })
    }

    /// Whether module `name` is a target (peft's matching rules).
    pub fn targets(&self, name: &str) -> Result<bool> {
        let hit = match &self.target_modules {
            TargetModules::List(l) => l
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
            TargetModules::Regex(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| Error::InvalidArgument(format!("target_modules regex {re:?}: {e}")))?
                .is_match(name),
        };
        if !hit {
            return Ok(false);
        }
        if let Some(layers) = &self.layers_to_transform {
            return Ok(layer_index(name).is_some_and(|i| layers.contains(&i)));
        }
        Ok(true)
    }
}

/// The key of `keys` that matches `name` as peft's `get_pattern_key` does: `(.*\.)?(key)$`.
fn pattern_match<'a>(
    keys: impl Iterator<Item = &'a String>,
    name: &str,
) -> Result<Option<&'a String>> {
    for k in keys {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .map_err(|e| Error::InvalidArgument(format!("pattern {k:?}: {e}")))?;
        if re.is_match(name) {
            return Ok(Some(k));
        }
    }
    Ok(None)
}

/// The number after `.layers.` in a module name.
fn layer_index(name: &str) -> Option<usize> {
    let i = name.find(".layers.")?;
    name[i + 8..].split('.').next()?.parse().ok()
}

/// One module's low-rank factors as stored.
#[derive(Debug, Clone)]
pub struct AdapterModule {
    /// Checkpoint module name, e.g. `model.text_model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// `[r, in]`, f32.
    pub a: Tensor,
    /// `[out, r]`, f32.
    pub b: Tensor,
    /// alpha/r (or alpha/√r).
    pub scale: f64,
}

/// A loaded PEFT LoRA adapter, validated against a model.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: AdapterConfig,
    /// LoRA factors per module.
    pub modules: Vec<AdapterModule>,
    /// Whole replacement weights (`modules_to_save`): module name → (weight, bias).
    pub saved: BTreeMap<String, (Tensor, Option<Tensor>)>,
}

/// Linear-module shapes by checkpoint name: `(in, out, has_bias)`.
pub type ModuleShapes = HashMap<String, (usize, usize, bool)>;

/// peft's key prefix in adapter_model.safetensors.
const PREFIX: &str = "base_model.model.";

impl Adapter {
    /// Loads `dir` and checks every tensor against `model`: a key that matches no module, a
    /// shape that does not fit, a rank that disagrees with the config are errors naming the key.
    pub fn load(dir: &Path, model: &Idefics3) -> Result<Self> {
        let shapes: ModuleShapes = model
            .linears()
            .into_iter()
            .map(|l| {
                let (out, inp) = l.weight.dims();
                (l.name.clone(), (inp, out, l.bias.is_some()))
            })
            .collect();
        Self::load_with_shapes(dir, &shapes, model.device())
    }

    /// [`Adapter::load`] with explicit limits (adapter rank, safetensors header size).
    pub fn load_limited(dir: &Path, model: &Idefics3, limits: &ConfigLimits) -> Result<Self> {
        let shapes: ModuleShapes = model
            .linears()
            .into_iter()
            .map(|l| {
                let (out, inp) = l.weight.dims();
                (l.name.clone(), (inp, out, l.bias.is_some()))
            })
            .collect();
        Self::load_with_shapes_limited(dir, &shapes, model.device(), limits)
    }

    /// Loads `dir` checking it against linear-module shapes `name → (in, out, has_bias)`.
    pub fn load_with_shapes(
        dir: &Path,
        shapes: &ModuleShapes,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Self::load_with_shapes_limited(dir, shapes, device, &ConfigLimits::default())
    }

    /// [`Adapter::load_with_shapes`] with explicit limits.
    pub fn load_with_shapes_limited(
        dir: &Path,
        shapes: &ModuleShapes,
        device: &candle_core::Device,
        limits: &ConfigLimits,
    ) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let config = AdapterConfig::from_file_limited(&cfg_path, limits.max_adapter_rank)?;
        let st = dir.join("adapter_model.safetensors");
        if !crate::fsio::regular_file_exists(&st)? {
            if dir.join("adapter_model.bin").exists() {
                return Err(Error::Unsupported(format!(
                    "{}: pickle adapters are not loaded; save with safe_serialization=True",
                    dir.join("adapter_model.bin").display()
                )));
            }
            return Err(Error::io(
                &st,
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            ));
        }
        let w = Weights::from_files_limited(
            std::slice::from_ref(&st),
            DType::F32,
            device,
            limits.max_header_bytes,
        )?;
        let fmt = |m: String| Error::format(&st, m);
        let mut a_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut b_parts: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut saved: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        let mut names: Vec<String> = w.names().map(String::from).collect();
        names.sort();
        for key in &names {
            let rest = key
                .strip_prefix(PREFIX)
                .ok_or_else(|| fmt(format!("tensor {key}: expected the peft prefix {PREFIX:?}")))?;
            // Adapter-named keys (`lora_A.default.weight`) appear in some exports.
            let rest = rest
                .replace(".lora_A.default.weight", ".lora_A.weight")
                .replace(".lora_B.default.weight", ".lora_B.weight");
            let (parts, m) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (&mut a_parts, m)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (&mut b_parts, m)
            } else if rest.contains("lora_embedding") || rest.contains("lora_magnitude") {
                return Err(Error::Unsupported(format!(
                    "{}: tensor {key} (LoRA on embeddings / DoRA)",
                    st.display()
                )));
            } else if let Some(m) = rest.strip_suffix(".weight") {
                w.check_float(key)?;
                saved.entry(m.to_string()).or_default().0 = Some(w.get_any(key)?);
                continue;
            } else if let Some(m) = rest.strip_suffix(".bias") {
                w.check_float(key)?;
                saved.entry(m.to_string()).or_default().1 = Some(w.get_any(key)?);
                continue;
            } else {
                return Err(fmt(format!(
                    "tensor {key}: not a LoRA factor or a saved module weight"
                )));
            };
            w.check_float(key)?;
            if w.shape(key).map_or(0, |s| s.len()) != 2 {
                return Err(fmt(format!(
                    "tensor {key} has shape {:?}, expected a matrix",
                    w.shape(key).unwrap_or_default()
                )));
            }
            if parts.insert(m.to_string(), w.get_any(key)?).is_some() {
                return Err(fmt(format!(
                    "tensor {key}: module {m} has this LoRA factor twice (with and without .default)"
                )));
            }
        }
        let mut modules = Vec::with_capacity(a_parts.len());
        for (name, a) in &a_parts {
            let key = |s: &str| format!("{PREFIX}{name}.{s}.weight");
            let b = b_parts.remove(name).ok_or_else(|| {
                fmt(format!(
                    "tensor {} has no matching {}",
                    key("lora_A"),
                    key("lora_B")
                ))
            })?;
            let &(in_dim, out_dim, _) = shapes.get(name.as_str()).ok_or_else(|| {
                fmt(format!(
                    "tensor {}: the model has no linear module {name}",
                    key("lora_A")
                ))
            })?;
            let (r, _) = config.rank_alpha(name)?;
            if a.dims() != [r, in_dim] {
                return Err(fmt(format!(
                    "tensor {} has shape {:?}, expected [{r}, {in_dim}] (rank {r} from adapter_config.json)",
                    key("lora_A"),
                    a.dims()
                )));
            }
            if b.dims() != [out_dim, r] {
                return Err(fmt(format!(
                    "tensor {} has shape {:?}, expected [{out_dim}, {r}]",
                    key("lora_B"),
                    b.dims()
                )));
            }
            if !config.targets(name)? {
                return Err(fmt(format!(
                    "tensor {}: module {name} is not selected by target_modules / layers_to_transform",
                    key("lora_A")
                )));
            }
            modules.push(AdapterModule {
                name: name.clone(),
                a: a.clone(),
                b,
                scale: config.scale(name)?,
            });
        }
        if let Some(name) = b_parts.keys().next() {
            return Err(fmt(format!(
                "tensor {PREFIX}{name}.lora_B.weight has no matching lora_A"
            )));
        }
        let mut whole = BTreeMap::new();
        for (name, (weight, bias)) in saved {
            let key = format!("{PREFIX}{name}.weight");
            let &(in_dim, out_dim, has_bias) = shapes.get(name.as_str()).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: tensor {key}: modules_to_save is supported for linear modules only",
                    st.display()
                ))
            })?;
            let weight =
                weight.ok_or_else(|| fmt(format!("{key} missing (only a bias was saved)")))?;
            if weight.dims() != [out_dim, in_dim] {
                return Err(fmt(format!(
                    "tensor {key} has shape {:?}, expected [{out_dim}, {in_dim}]",
                    weight.dims()
                )));
            }
            if let Some(b) = &bias {
                if !has_bias || b.dims() != [out_dim] {
                    return Err(fmt(format!(
                        "tensor {PREFIX}{name}.bias does not fit module {name}"
                    )));
                }
            }
            whole.insert(name, (weight, bias));
        }
        // Every modules_to_save entry must have its weights in the file: an entry without them
        // would silently leave the base module in place of the trained one.
        for entry in &config.modules_to_save {
            let pat = format!(".{entry}.");
            if !whole
                .keys()
                .any(|m: &String| format!(".{m}.").contains(&pat))
            {
                return Err(fmt(format!(
                    "modules_to_save names {entry:?} (adapter_config.json) but the file holds no \
                     saved weight of a module under it"
                )));
            }
        }
        if modules.is_empty() && whole.is_empty() {
            return Err(fmt("no LoRA tensors in the adapter".into()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            modules,
            saved: whole,
        })
    }

    /// Writes the adapter in peft's layout (`adapter_config.json` + `adapter_model.safetensors`,
    /// keys `base_model.model.<module>.lora_{A,B}.weight`), atomically: temp dir, fsync, rename.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::fsio::write_dir_atomic(dir, |tmp| self.save_files(tmp))
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` (each fsynced) into the
    /// existing directory `dir`, for callers that publish them as part of a larger unit.
    pub fn save_files(&self, dir: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for m in &self.modules {
            tensors.push((
                format!("{PREFIX}{}.lora_A.weight", m.name),
                m.a.to_dtype(DType::F32)?,
            ));
            tensors.push((
                format!("{PREFIX}{}.lora_B.weight", m.name),
                m.b.to_dtype(DType::F32)?,
            ));
        }
        for (name, (w, b)) in &self.saved {
            tensors.push((format!("{PREFIX}{name}.weight"), w.to_dtype(DType::F32)?));
            if let Some(b) = b {
                tensors.push((format!("{PREFIX}{name}.bias"), b.to_dtype(DType::F32)?));
            }
        }
        let config = serde_json::to_string_pretty(&self.config.raw)
            .map_err(|e| Error::Internal(format!("adapter config: {e}")))?;
        let st = dir.join("adapter_model.safetensors");
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        candle_core::safetensors::save(&map, &st)
            .map_err(|e| Error::io(&st, std::io::Error::other(e.to_string())))?;
        crate::fsio::fsync_file(&st)?;
        crate::fsio::write_file_synced(&dir.join("adapter_config.json"), config.as_bytes())
    }

    /// Adds this adapter to `set` with multiplier `weight` (1.0 = as trained).
    pub fn add_to(&self, set: &mut LoraSet, weight: f64, dtype: DType) -> Result<()> {
        for m in &self.modules {
            set.push(
                &m.name,
                LoraPair {
                    a: m.a.to_dtype(dtype)?,
                    b: m.b.to_dtype(dtype)?,
                    scale: m.scale * weight,
                },
            );
        }
        for (name, (w, b)) in &self.saved {
            let b = match b {
                Some(b) => Some(b.to_dtype(dtype)?),
                None => None,
            };
            set.replace(name, w.to_dtype(dtype)?, b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> Result<AdapterConfig> {
        AdapterConfig::from_json(v, Path::new("adapter_config.json"))
    }

    #[test]
    fn scales_and_patterns() {
        let c = cfg(serde_json::json!({
            "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {"model.text_model.layers.0.self_attn.q_proj": 2}, "alpha_pattern": {}
        }))
        .unwrap();
        assert_eq!(
            c.scale("model.text_model.layers.1.self_attn.q_proj")
                .unwrap(),
            2.0
        );
        assert_eq!(
            c.rank_alpha("model.text_model.layers.0.self_attn.q_proj")
                .unwrap(),
            (2, 8.0)
        );
        assert!(c
            .targets("model.vision_model.encoder.layers.0.self_attn.v_proj")
            .unwrap());
        assert!(!c.targets("model.text_model.layers.0.mlp.up_proj").unwrap());
        let rs = cfg(serde_json::json!({"r": 4, "lora_alpha": 6, "target_modules": "q_proj", "use_rslora": true})).unwrap();
        assert_eq!(rs.scale("q_proj").unwrap(), 3.0);
        assert!(
            !rs.targets("model.x.q_proj").unwrap(),
            "a regex must match the whole name"
        );
    }

    #[test]
    fn layers_to_transform_restricts_targets() {
        let c = cfg(
            serde_json::json!({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [1]}),
        )
        .unwrap();
        assert!(c
            .targets("model.text_model.layers.1.self_attn.q_proj")
            .unwrap());
        assert!(!c
            .targets("model.text_model.layers.0.self_attn.q_proj")
            .unwrap());
    }

    #[test]
    fn unsupported_variants_are_rejected() {
        for v in [
            serde_json::json!({"r": 2, "target_modules": ["q_proj"], "use_dora": true}),
            serde_json::json!({"r": 2, "target_modules": ["q_proj"], "bias": "all"}),
            serde_json::json!({"r": 2, "target_modules": ["q_proj"], "peft_type": "IA3"}),
        ] {
            assert!(matches!(cfg(v), Err(Error::Unsupported(_))));
        }
        assert!(cfg(serde_json::json!({"r": 0, "target_modules": ["q_proj"]})).is_err());
        assert!(cfg(serde_json::json!({"r": 2})).is_err());
    }
}
