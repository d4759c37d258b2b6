//! The metadata of llama.cpp's SmolVLM pair, both ways: the HF files (config, preprocessor,
//! tokenizer, chat template, generation ids) a GGUF pair stands for, so the rest of the crate
//! reads a pair exactly as it reads a model directory; and the GGUF keys `smolcap quantize`
//! writes from a model directory, as `convert_hf_to_gguf.py` writes them.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use super::file::{GgufFile, GgufHeader, TensorInfo, Value};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// llama.cpp's token types (`llama_token_type`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// A parsed GGUF header and the file it came from (for messages).
#[derive(Clone, Copy)]
pub struct Src<'a> {
    /// The file's path.
    pub path: &'a Path,
    /// Its header.
    pub header: &'a GgufHeader,
}

impl<'a> Src<'a> {
    /// The header of an open file.
    pub fn of(f: &'a GgufFile) -> Self {
        Self {
            path: f.path(),
            header: f.header(),
        }
    }

    fn path(&self) -> &'a Path {
        self.path
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.header.get(key)
    }

    fn tensor(&self, name: &str) -> Option<&'a TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }
}

/// A required metadata value of `f`, with the key named in the error.
fn req<'a>(f: &Src<'a>, key: &str) -> Result<&'a Value> {
    f.get(key)
        .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: missing")))
}

fn req_u64(f: &Src, key: &str) -> Result<u64> {
    req(f, key)?
        .as_u64()
        .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected an integer")))
}

fn opt_u64(f: &Src, key: &str) -> Result<Option<u64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected an integer"))),
    }
}

fn opt_f64(f: &Src, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        // An f32 as the decimal it was written from (1e-6, not 9.99999997e-7): the shortest
        // representation that round-trips the f32, as Python's converter started from.
        Some(Value::F32(x)) => x
            .to_string()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected a number"))),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected a number"))),
    }
}

fn req_str<'a>(f: &Src<'a>, key: &str) -> Result<&'a str> {
    req(f, key)?
        .as_str()
        .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected a string")))
}

fn str_array<'a>(f: &Src<'a>, key: &str) -> Result<Vec<&'a str>> {
    let a = req(f, key)?
        .as_array()
        .ok_or_else(|| Error::format(f.path(), format!("metadata {key}: expected an array")))?;
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                Error::format(f.path(), format!("metadata {key}[{i}]: expected a string"))
            })
        })
        .collect()
}

fn f32x3(f: &Src, key: &str, default: [f64; 3]) -> Result<[f64; 3]> {
    let Some(v) = f.get(key) else {
        return Ok(default);
    };
    let bad = || Error::format(f.path(), format!("metadata {key}: expected three numbers"));
    let a = v.as_array().ok_or_else(bad)?;
    if a.len() != 3 {
        return Err(bad());
    }
    let mut out = [0.0; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64().filter(|x| x.is_finite()).ok_or_else(bad)?;
    }
    Ok(out)
}

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` (byte-level BPE models only).
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    match pre {
        // SmolLM / SmolLM2 (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM): each digit alone, then GPT-2's.
        "smollm" => Some(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]})),
        "gpt2" | "default" => Some(byte_level),
        _ => None,
    }
}

/// `tokenizer.json` for the vocabulary in `text`'s metadata (a byte-level BPE, `gpt2` model).
fn tokenizer_json(text: &Src) -> Result<Json> {
    let model = req_str(text, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "{}: tokenizer.ggml.model {model:?} (only byte-level BPE, \"gpt2\", is read)",
            text.path().display()
        )));
    }
    let pre_name = text
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: tokenizer.ggml.pre {pre_name:?} (smollm and gpt2 are read)",
            text.path().display()
        ))
    })?;
    let tokens = str_array(text, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match text.get("tokenizer.ggml.token_type") {
        None => vec![token_type::NORMAL as i64; tokens.len()],
        Some(v) => {
            let a = v.as_array().ok_or_else(|| {
                Error::format(
                    text.path(),
                    "metadata tokenizer.ggml.token_type: expected an array",
                )
            })?;
            if a.len() != tokens.len() {
                return Err(Error::format(
                    text.path(),
                    format!(
                        "metadata tokenizer.ggml.token_type has {} entries for {} tokens",
                        a.len(),
                        tokens.len()
                    ),
                ));
            }
            a.iter()
                .map(|x| match x {
                    Value::I32(t) => Ok(*t as i64),
                    other => other.as_u64().map(|u| u as i64).ok_or_else(|| {
                        Error::format(
                            text.path(),
                            "metadata tokenizer.ggml.token_type: expected integers",
                        )
                    }),
                })
                .collect::<Result<_>>()?
        }
    };
    let merges = match text.get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(_) => str_array(text, "tokenizer.ggml.merges")?,
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.contains_key(*tok) {
            return Err(Error::format(
                text.path(),
                format!("metadata tokenizer.ggml.tokens: {tok:?} appears twice"),
            ));
        }
        vocab.insert(tok.to_string(), json!(id));
        let ty = *ty as i32;
        if ty == token_type::CONTROL || ty == token_type::USER_DEFINED {
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == token_type::CONTROL}),
            );
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                Error::format(
                    text.path(),
                    format!("metadata tokenizer.ggml.merges[{i}]: {m:?} is not two tokens"),
                )
            })?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_>>()?;
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    }))
}

/// The HF files (`config.json`, `preprocessor_config.json`, `processor_config.json`,
/// `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) that a llama.cpp SmolVLM
/// pair stands for, from its metadata; each key missing or of the wrong type is named.
pub fn hf_files(text: &GgufFile, mmproj: &GgufFile) -> Result<BTreeMap<String, String>> {
    hf_files_of(&Src::of(text), &Src::of(mmproj))
}

/// [`hf_files`] from parsed headers.
pub fn hf_files_of(text: &Src, mmproj: &Src) -> Result<BTreeMap<String, String>> {
    let arch = req_str(text, "general.architecture")?;
    if arch != "llama" {
        return Err(Error::Unsupported(format!(
            "{}: general.architecture {arch:?} (a SmolVLM text model is \"llama\")",
            text.path().display()
        )));
    }
    let varch = req_str(mmproj, "general.architecture")?;
    let proj = mmproj
        .get("clip.projector_type")
        .or_else(|| mmproj.get("clip.vision.projector_type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if varch != "clip" || proj != "idefics3" {
        return Err(Error::Unsupported(format!(
            "{}: a {varch:?} file with projector {proj:?} (SmolVLM's is a \"clip\" file with projector \"idefics3\")",
            mmproj.path().display()
        )));
    }
    let t = |k: &str| format!("llama.{k}");
    let heads = req_u64(text, &t("attention.head_count"))?;
    let hidden = req_u64(text, &t("embedding_length"))?;
    let head_dim = match opt_u64(text, &t("attention.key_length"))? {
        Some(d) => d,
        None => opt_u64(text, &t("rope.dimension_count"))?.unwrap_or(hidden / heads.max(1)),
    };
    let tokens = str_array(text, "tokenizer.ggml.tokens")?;
    let vocab = opt_u64(text, &t("vocab_size"))?.unwrap_or(tokens.len() as u64);
    let image_token = tokens
        .iter()
        .position(|s| *s == "<image>")
        .ok_or_else(|| Error::format(text.path(), "the vocabulary has no <image> token"))?;
    let mut text_config = json!({
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": req_u64(text, &t("feed_forward_length"))?,
        "num_hidden_layers": req_u64(text, &t("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": opt_u64(text, &t("attention.head_count_kv"))?.unwrap_or(heads),
        "head_dim": head_dim,
        "rms_norm_eps": opt_f64(text, &t("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        "rope_theta": opt_f64(text, &t("rope.freq_base"))?.unwrap_or(10_000.0),
        "max_position_embeddings": opt_u64(text, &t("context_length"))?.unwrap_or(2048),
        "vocab_size": vocab,
        "attention_bias": text.tensor("blk.0.attn_q.bias").is_some(),
        "mlp_bias": text.tensor("blk.0.ffn_up.bias").is_some(),
        "hidden_act": "silu",
    });
    match text.get(&t("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = opt_f64(text, &t("rope.scaling.factor"))?.unwrap_or(1.0);
            text_config["rope_scaling"] = json!({"type": "linear", "factor": factor});
        }
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{}: llama.rope.scaling.type {other:?}",
                text.path().display()
            )))
        }
    }
    let v = |k: &str| format!("clip.vision.{k}");
    let image_size = req_u64(mmproj, &v("image_size"))?;
    let vision_config = json!({
        "hidden_size": req_u64(mmproj, &v("embedding_length"))?,
        "intermediate_size": req_u64(mmproj, &v("feed_forward_length"))?,
        "num_hidden_layers": req_u64(mmproj, &v("block_count"))?,
        "num_attention_heads": req_u64(mmproj, &v("attention.head_count"))?,
        "image_size": image_size,
        "patch_size": req_u64(mmproj, &v("patch_size"))?,
        "layer_norm_eps": opt_f64(mmproj, &v("attention.layer_norm_epsilon"))?.unwrap_or(1e-6),
        "hidden_act": "gelu_pytorch_tanh",
        "num_channels": 3,
    });
    let scale = opt_u64(mmproj, &v("projector.scale_factor"))?.unwrap_or(2);
    let tied = text.tensor("output.weight").is_none();
    let id = |k: &str| opt_u64(text, &format!("tokenizer.ggml.{k}"));
    let eos = id("eos_token_id")?;
    let pad = id("padding_token_id")?.or(eos);
    let config = json!({
        "architectures": ["Idefics3ForConditionalGeneration"],
        "model_type": "idefics3",
        "image_token_id": image_token,
        "scale_factor": scale,
        "tie_word_embeddings": tied,
        "vocab_size": vocab,
        "text_config": text_config,
        "vision_config": vision_config,
    });
    let longest = opt_u64(mmproj, &v("preproc_image_size"))?.unwrap_or(image_size * 4);
    let mean = f32x3(mmproj, &v("image_mean"), [0.5; 3])?;
    let std = f32x3(mmproj, &v("image_std"), [0.5; 3])?;
    let preprocessor = json!({
        "do_convert_rgb": true, "do_image_splitting": true, "do_normalize": true, "do_pad": true,
        "do_rescale": true, "do_resize": true, "image_mean": mean, "image_std": std,
        "max_image_size": {"longest_edge": image_size}, "resample": 1,
        "rescale_factor": 1.0 / 255.0, "size": {"longest_edge": longest},
    });
    let name_of = |i: Option<u64>| -> Option<String> {
        i.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let mut tok_cfg = Map::new();
    for (k, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ] {
        if let Some(s) = name_of(id(key)?) {
            tok_cfg.insert(k.into(), json!(s));
        }
    }
    if let Some(tmpl) = text.get("tokenizer.chat_template") {
        let s = tmpl.as_str().ok_or_else(|| {
            Error::format(
                text.path(),
                "metadata tokenizer.chat_template: expected a string",
            )
        })?;
        tok_cfg.insert("chat_template".into(), json!(s));
    }
    let mut generation = json!({});
    if let Some(e) = eos {
        generation["eos_token_id"] = json!(e);
    }
    if let Some(p) = pad {
        generation["pad_token_id"] = json!(p);
    }
    let tokenizer = tokenizer_json(text)?;
    let mut out = BTreeMap::new();
    for (name, v) in [
        ("config.json", config),
        ("preprocessor_config.json", preprocessor),
        ("tokenizer.json", tokenizer),
        ("tokenizer_config.json", Json::Object(tok_cfg)),
        ("generation_config.json", generation),
    ] {
        out.insert(name.to_string(), v.to_string());
    }
    Ok(out)
}

/// Reads `dir/name` as JSON if it exists.
fn json_opt(dir: &Path, name: &str) -> Result<Option<Json>> {
    let p = dir.join(name);
    if !crate::fsio::regular_file_exists(&p)? {
        return Ok(None);
    }
    let text = crate::fsio::read_text_limited(&p, crate::fsio::MAX_JSON_BYTES)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&p, format!("invalid JSON: {e}")))
}

/// Whether an added token reads as a control token although not flagged special
/// (`convert_hf_to_gguf.py`'s `does_token_look_special`).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// The `tokenizer.*` keys for the `tokenizer.json` in `dir` (a byte-level BPE with SmolLM's or
/// GPT-2's pre-tokenizer), `vocab_size` entries long as llama.cpp pads them.
fn tokenizer_keys(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let tj = json_opt(dir, "tokenizer.json")?
        .ok_or_else(|| Error::format(&path, "missing tokenizer.json"))?;
    let unsupported = |what: String| {
        Error::Unsupported(format!(
            "{}: {what}; GGUF export takes byte-level BPE tokenizers (SmolLM2's)",
            path.display()
        ))
    };
    let model = &tj["model"];
    if model["type"] != "BPE" {
        return Err(unsupported(format!("model type {}", model["type"])));
    }
    if !tj["normalizer"].is_null() {
        return Err(unsupported("a normalizer".into()));
    }
    let pre = &tj["pre_tokenizer"];
    let pre_name = if Some(pre) == pre_tokenizer("smollm").as_ref() {
        "smollm"
    } else if Some(pre) == pre_tokenizer("gpt2").as_ref() {
        "gpt2"
    } else {
        return Err(unsupported(format!("pre-tokenizer {pre}")));
    };
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::format(&path, "model.vocab: expected an object"))?;
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| Error::format(&path, format!("model.vocab.{tok}: not an id")))?
            as usize;
        if id >= vocab_size {
            return Err(Error::format(
                &path,
                format!(
                    "token {tok:?} has id {id}, outside the model's vocabulary of {vocab_size}"
                ),
            ));
        }
        tokens[id] = Some((tok.clone(), token_type::NORMAL));
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(Error::format(
                &path,
                "added_tokens: entry without id or content",
            ));
        };
        let id = id as usize;
        if id >= vocab_size {
            return Err(Error::format(
                &path,
                format!(
                    "added token {content:?} has id {id}, outside the vocabulary of {vocab_size}"
                ),
            ));
        }
        let ty = if a["special"].as_bool() == Some(true) || looks_special(content) {
            token_type::CONTROL
        } else {
            token_type::USER_DEFINED
        };
        tokens[id] = Some((content.to_string(), ty));
    }
    let (mut names, mut types) = (Vec::new(), Vec::new());
    for (i, t) in tokens.into_iter().enumerate() {
        let (s, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED));
        names.push(Value::Str(s));
        types.push(Value::I32(ty));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(Value::Str(s.clone())),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => {
                Ok(Value::Str(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or(""),
                    p[1].as_str().unwrap_or("")
                )))
            }
            other => Err(Error::format(
                &path,
                format!("model.merges: bad entry {other}"),
            )),
        })
        .collect::<Result<_>>()?;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::Str("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::Str(pre_name.into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(names)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
    ];
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".to_string(), Value::Array(merges)));
    }
    Ok(out)
}

/// The id of special token `key` (`bos_token`, …) named in `tokenizer_config.json` or
/// `special_tokens_map.json`, looked up in `tokens`.
fn special_id(dir: &Path, key: &str, tokens: &[Value]) -> Result<Option<u32>> {
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        if let Some(v) = json_opt(dir, f)? {
            let s = match &v[key] {
                Json::String(s) => Some(s.as_str()),
                Json::Object(o) => o.get("content").and_then(Json::as_str),
                _ => None,
            };
            if let Some(s) = s {
                return Ok(tokens
                    .iter()
                    .position(|t| t.as_str() == Some(s))
                    .map(|i| i as u32));
            }
        }
    }
    Ok(None)
}

/// The metadata of the text GGUF for the model in `dir` (`general.*`, `llama.*`, `tokenizer.*`),
/// as `convert_hf_to_gguf.py` writes it; `file_type` is llama.cpp's `llama_ftype`.
pub fn text_metadata(
    dir: &Path,
    cfg: &ModelConfig,
    name: &str,
    file_type: u32,
    stop_tokens: &[u32],
    chat_template: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let tc = &cfg.text;
    let u = |x: usize| Value::U32(x as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str("llama".into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.name".into(), Value::Str(name.into())),
        ("llama.block_count".into(), u(tc.num_hidden_layers)),
        ("llama.context_length".into(), u(tc.max_position_embeddings)),
        ("llama.embedding_length".into(), u(tc.hidden_size)),
        ("llama.feed_forward_length".into(), u(tc.intermediate_size)),
        (
            "llama.attention.head_count".into(),
            u(tc.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u(tc.num_key_value_heads),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(tc.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(tc.rms_norm_eps as f32),
        ),
        ("llama.attention.key_length".into(), u(tc.head_dim)),
        ("llama.attention.value_length".into(), u(tc.head_dim)),
        ("general.file_type".into(), Value::U32(file_type)),
        ("llama.vocab_size".into(), u(tc.vocab_size)),
        ("llama.rope.dimension_count".into(), u(tc.head_dim)),
    ];
    if tc.rope_linear_factor != 1.0 {
        m.push((
            "llama.rope.scaling.type".into(),
            Value::Str("linear".into()),
        ));
        m.push((
            "llama.rope.scaling.factor".into(),
            Value::F32(tc.rope_linear_factor as f32),
        ));
    }
    let tk = tokenizer_keys(dir, tc.vocab_size)?;
    let tokens = tk
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .unwrap_or(&[])
        .to_vec();
    m.extend(tk);
    if let Some(b) = special_id(dir, "bos_token", &tokens)? {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = stop_tokens.first() {
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(uk) = special_id(dir, "unk_token", &tokens)? {
        m.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(uk)));
    }
    if let Some(p) = special_id(dir, "pad_token", &tokens)? {
        m.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    // The chat template writes the leading <|im_start|> itself.
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    m.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
    if let Some(t) = chat_template {
        m.push(("tokenizer.chat_template".into(), Value::Str(t.into())));
    }
    m.push(("general.quantization_version".into(), Value::U32(2)));
    Ok(m)
}

/// The metadata of the `mmproj` GGUF (`clip.*`) for the model in `dir`, as
/// `convert_hf_to_gguf.py --mmproj` writes it for SmolVLM (projector `idefics3`).
pub fn mmproj_metadata(
    cfg: &ModelConfig,
    name: &str,
    file_type: u32,
    longest_edge: u32,
    mean: [f32; 3],
    std: [f32; 3],
) -> Vec<(String, Value)> {
    let vc = &cfg.vision;
    let u = |x: usize| Value::U32(x as u32);
    let arr = |a: [f32; 3]| Value::Array(a.iter().map(|&x| Value::F32(x)).collect());
    vec![
        ("general.architecture".into(), Value::Str("clip".into())),
        ("general.type".into(), Value::Str("mmproj".into())),
        ("general.name".into(), Value::Str(name.into())),
        ("general.file_type".into(), Value::U32(file_type)),
        ("clip.has_vision_encoder".into(), Value::Bool(true)),
        ("clip.vision.projection_dim".into(), u(cfg.text.hidden_size)),
        ("clip.vision.image_size".into(), u(vc.image_size)),
        ("clip.vision.patch_size".into(), u(vc.patch_size)),
        ("clip.vision.embedding_length".into(), u(vc.hidden_size)),
        (
            "clip.vision.feed_forward_length".into(),
            u(vc.intermediate_size),
        ),
        ("clip.vision.block_count".into(), u(vc.num_hidden_layers)),
        (
            "clip.vision.attention.head_count".into(),
            u(vc.num_attention_heads),
        ),
        ("clip.vision.image_mean".into(), arr(mean)),
        ("clip.vision.image_std".into(), arr(std)),
        ("clip.projector_type".into(), Value::Str("idefics3".into())),
        (
            "clip.vision.attention.layer_norm_epsilon".into(),
            Value::F32(vc.layer_norm_eps as f32),
        ),
        (
            "clip.vision.projector.scale_factor".into(),
            u(cfg.scale_factor),
        ),
        ("clip.use_gelu".into(), Value::Bool(true)),
        (
            "clip.vision.preproc_image_size".into(),
            Value::U32(longest_edge),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
    ]
}
