//! `smolcap quantize`: a model directory written as the GGUF pair llama.cpp uses for SmolVLM (a
//! `llama` text model and an `idefics3` `mmproj`), each matrix in the format the spec gives its
//! part, one tensor in memory at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::names::{order_heads, source_row, to_gguf, Part};
use super::weights::ggml_type_id;
use super::writer::{write, TensorPlan};
use crate::config::{ConfigLimits, ModelConfig};
use crate::error::{Error, Result};
use crate::model::weights::Weights;
use crate::model_files::ModelFiles;
use crate::processor::Processor;
use crate::quant::{GgmlKind, GgmlTensor, QuantChoice, QuantSpec};

/// What `export_pair` wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// The text model file.
    pub text: PathBuf,
    /// The projector file.
    pub mmproj: PathBuf,
    /// Tensors written per stored type, e.g. `q5_0 → 181`.
    pub types: BTreeMap<String, usize>,
}

/// llama.cpp's `llama_ftype` for a file whose matrices are mostly `k` (f32 when dense).
fn file_type(k: Option<GgmlKind>) -> u32 {
    match k {
        None => 0,
        Some(GgmlKind::F16) => 1,
        Some(GgmlKind::Q4_0) => 2,
        Some(GgmlKind::Q8_0) => 7,
        Some(GgmlKind::Q5_0) => 8,
        Some(GgmlKind::Q4K) => 14,
        Some(GgmlKind::Q6K) => 18,
        Some(GgmlKind::Bf16) => 32,
    }
}

fn ggml_kind(c: Option<QuantChoice>, part: &str) -> Result<Option<GgmlKind>> {
    match c {
        None => Ok(None),
        Some(QuantChoice::Ggml(k)) => Ok(Some(k)),
        Some(QuantChoice::Nf4(_)) => Err(Error::InvalidArgument(format!(
            "{part}: nf4 is not a GGUF format (use q8_0, q6_k, q5_0, q4_k, q4_0, f16 or bf16)"
        ))),
    }
}

/// Writes the model in `dir` as `{out}/{name}-{type}.gguf` and `{out}/mmproj-{name}-{type}.gguf`,
/// each part's matrices stored as `spec` says (K-quants falling back per tensor as llama.cpp's
/// do), vectors and the vision embeddings in f32 as `convert_hf_to_gguf.py` keeps them.
pub fn export_pair(
    dir: &Path,
    out: &Path,
    spec: &QuantSpec,
    type_label: &str,
) -> Result<ExportReport> {
    let files = ModelFiles::Dir(dir.to_path_buf());
    if !dir.join("config.json").is_file() {
        return Err(Error::InvalidArgument(format!(
            "{}: not a model directory in the HF layout (no config.json)",
            dir.display()
        )));
    }
    let limits = ConfigLimits::default();
    let cfg = ModelConfig::from_file(&dir.join("config.json"), &limits)?;
    let processor = Processor::load(&files, &cfg)?;
    let (stops, _) = crate::session::special_ids(&files, &processor)?;
    let w = Weights::open(dir, DType::F32, &Device::Cpu)?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    crate::fsio::ensure_dir(out)?;
    let text_path = out.join(format!("{name}-{type_label}.gguf"));
    let mmproj_path = out.join(format!("mmproj-{name}-{type_label}.gguf"));

    let tied = cfg.tie_word_embeddings || !w.contains("lm_head.weight");
    let kind_of = |hf: &str, part: Part| -> Result<Option<GgmlKind>> {
        Ok(match part {
            Part::Text if hf.ends_with("embed_tokens.weight") => ggml_kind(
                if tied {
                    spec.lm_head.or(spec.embed)
                } else {
                    spec.embed
                },
                "embed",
            )?,
            Part::Text if hf == "lm_head.weight" => ggml_kind(spec.lm_head, "lm_head")?,
            Part::Text => ggml_kind(spec.text, "text")?,
            Part::Mmproj if hf.starts_with("model.connector.") => {
                ggml_kind(spec.connector, "connector")?
            }
            Part::Mmproj if hf.contains(".embeddings.") => None,
            Part::Mmproj => ggml_kind(spec.vision, "vision")?,
        })
    };

    // Plans per file: (gguf plan, checkpoint name, stored format or f32, heads to permute).
    type Planned = (TensorPlan, String, Option<GgmlKind>, Option<usize>);
    let mut plans: [Vec<Planned>; 2] = [Vec::new(), Vec::new()];
    let mut names: Vec<String> = w.names().map(String::from).collect();
    names.sort();
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for hf in names {
        if tied && hf == "lm_head.weight" {
            continue;
        }
        let Some((gg, part, order)) = to_gguf(&hf) else {
            continue;
        };
        let shape = w.shape(&hf).unwrap_or_default();
        let mut kind = if shape.len() == 2 {
            kind_of(&hf, part)?
        } else {
            None
        };
        if let Some(k) = kind {
            kind = Some(k.for_cols(shape[1]));
        }
        types
            .entry(kind.map_or("f32", GgmlKind::name).to_string())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let heads = order_heads(
            order,
            cfg.text.num_attention_heads,
            cfg.text.num_key_value_heads,
        );
        let plan = TensorPlan {
            name: gg,
            dims,
            ggml_type: kind.map_or(0, ggml_type_id),
        };
        plans[(part == Part::Mmproj) as usize].push((plan, hf, kind, heads));
    }

    let produce = |list: &[Planned], i: usize| -> Result<Vec<u8>> {
        let (plan, hf, kind, heads) = &list[i];
        let t = w.get_as(hf, DType::F32)?;
        let shape = t.dims().to_vec();
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        let cols = *shape.last().unwrap_or(&1);
        let rows = v.len() / cols.max(1);
        if let Some(h) = heads {
            // GGUF row r holds checkpoint row source_row(r): llama.cpp's q/k permutation.
            let src = v.clone();
            for r in 0..rows {
                let s = source_row(r, rows, *h);
                v[r * cols..(r + 1) * cols].copy_from_slice(&src[s * cols..(s + 1) * cols]);
            }
        }
        match kind {
            None => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Some(k) => {
                let q = GgmlTensor::quantize(&v, rows, cols, *k)
                    .map_err(|e| Error::InvalidArgument(format!("{}: {e}", plan.name)))?;
                Ok(q.row_bytes(0, rows)?.to_vec())
            }
        }
    };

    let main_kind = ggml_kind(spec.text, "text")?;
    let vision_kind = ggml_kind(spec.vision, "vision")?;
    let text_meta = super::meta::text_metadata(
        dir,
        &cfg,
        &name,
        file_type(main_kind),
        &stops,
        processor.chat_template.as_deref(),
    )?;
    let img = &processor.image;
    let mmproj_meta = super::meta::mmproj_metadata(
        &cfg,
        &name,
        file_type(vision_kind),
        img.size_longest_edge,
        img.image_mean,
        img.image_std,
    );
    let text_plans: Vec<TensorPlan> = plans[0].iter().map(|p| p.0.clone()).collect();
    write(&text_path, &text_meta, &text_plans, |i| {
        produce(&plans[0], i)
    })?;
    let mm_plans: Vec<TensorPlan> = plans[1].iter().map(|p| p.0.clone()).collect();
    write(&mmproj_path, &mmproj_meta, &mm_plans, |i| {
        produce(&plans[1], i)
    })?;
    Ok(ExportReport {
        text: text_path,
        mmproj: mmproj_path,
        types,
    })
}
