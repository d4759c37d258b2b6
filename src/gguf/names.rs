//! Tensor names of llama.cpp's SmolVLM pair (`convert_hf_to_gguf.py`: a `llama` text model and
//! an `idefics3` clip projector) and the checkpoint names they come from; and the row order
//! llama.cpp gives the query and key projections (interleaved RoPE halves).

/// Which file of the pair a tensor lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The text model (`general.architecture = llama`).
    Text,
    /// The vision projector (`general.architecture = clip`).
    Mmproj,
}

/// Checkpoint prefix of the decoder.
pub const TEXT_PREFIX: &str = "model.text_model";
/// Checkpoint prefix of the vision tower.
pub const VISION_PREFIX: &str = "model.vision_model";

/// Per-layer names: (checkpoint suffix after `layers.{i}.`, GGUF suffix after `blk.{i}.`).
const TEXT_LAYER: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

const VISION_LAYER: [(&str, &str); 8] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.out_proj", "attn_out"),
    ("layer_norm1", "ln1"),
    ("layer_norm2", "ln2"),
    ("mlp.fc1", "ffn_up"),
    ("mlp.fc2", "ffn_down"),
];

/// Whole-model names: (checkpoint module, GGUF module, part).
const GLOBAL: [(&str, &str, Part); 7] = [
    ("model.text_model.embed_tokens", "token_embd", Part::Text),
    ("model.text_model.norm", "output_norm", Part::Text),
    ("lm_head", "output", Part::Text),
    (
        "model.vision_model.embeddings.patch_embedding",
        "v.patch_embd",
        Part::Mmproj,
    ),
    (
        "model.vision_model.embeddings.position_embedding",
        "v.position_embd",
        Part::Mmproj,
    ),
    (
        "model.vision_model.post_layernorm",
        "v.post_ln",
        Part::Mmproj,
    ),
    (
        "model.connector.modality_projection.proj",
        "mm.model.fc",
        Part::Mmproj,
    ),
];

/// How a tensor's rows are reordered between the checkpoint and the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    /// Same rows.
    Same,
    /// A query projection (llama.cpp's `permute(w, n_head, n_head)`).
    Query,
    /// A key projection (`permute(w, n_head, n_kv_head)`).
    Key,
}

/// Splits `name` into (module, `weight`/`bias`).
fn split_param(name: &str) -> Option<(&str, &str)> {
    let (m, p) = name.rsplit_once('.')?;
    matches!(p, "weight" | "bias").then_some((m, p))
}

/// `(i, rest)` of a module named `{prefix}{i}.{rest}`, `i` in canonical decimal only (`01` would
/// map two names onto one).
fn layer_of<'a>(module: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (i, sub) = module.strip_prefix(prefix)?.split_once('.')?;
    if i.is_empty() || (i.len() > 1 && i.starts_with('0')) {
        return None;
    }
    Some((i.parse().ok()?, sub))
}

/// The GGUF name, file and row order of checkpoint tensor `name`, if it belongs to the pair.
pub fn to_gguf(name: &str) -> Option<(String, Part, RowOrder)> {
    let (module, param) = split_param(name)?;
    for (hf, gg, part) in GLOBAL {
        if module == hf {
            return Some((format!("{gg}.{param}"), part, RowOrder::Same));
        }
    }
    let layer = |prefix: &str| layer_of(module, prefix);
    if let Some((i, sub)) = layer("model.text_model.layers.") {
        let (_, gg) = TEXT_LAYER.iter().find(|(hf, _)| *hf == sub)?;
        let order = match *gg {
            "attn_q" => RowOrder::Query,
            "attn_k" => RowOrder::Key,
            _ => RowOrder::Same,
        };
        return Some((format!("blk.{i}.{gg}.{param}"), Part::Text, order));
    }
    if let Some((i, sub)) = layer("model.vision_model.encoder.layers.") {
        let (_, gg) = VISION_LAYER.iter().find(|(hf, _)| *hf == sub)?;
        return Some((
            format!("v.blk.{i}.{gg}.{param}"),
            Part::Mmproj,
            RowOrder::Same,
        ));
    }
    None
}

/// The checkpoint name and row order of GGUF tensor `name` in `part`'s file.
pub fn from_gguf(name: &str, part: Part) -> Option<(String, RowOrder)> {
    let (module, param) = split_param(name)?;
    for (hf, gg, p) in GLOBAL {
        if module == gg && p == part {
            return Some((format!("{hf}.{param}"), RowOrder::Same));
        }
    }
    let layer = |prefix: &str| layer_of(module, prefix);
    match part {
        Part::Text => {
            let (i, sub) = layer("blk.")?;
            let (hf, gg) = TEXT_LAYER.iter().find(|(_, gg)| *gg == sub)?;
            let order = match *gg {
                "attn_q" => RowOrder::Query,
                "attn_k" => RowOrder::Key,
                _ => RowOrder::Same,
            };
            Some((format!("{TEXT_PREFIX}.layers.{i}.{hf}.{param}"), order))
        }
        Part::Mmproj => {
            let (i, sub) = layer("v.blk.")?;
            let (hf, _) = VISION_LAYER.iter().find(|(_, gg)| *gg == sub)?;
            Some((
                format!("{VISION_PREFIX}.encoder.layers.{i}.{hf}.{param}"),
                RowOrder::Same,
            ))
        }
    }
}

/// The checkpoint row that GGUF row `r` holds, for a projection of `rows` rows split into
/// `heads` heads (llama.cpp's `permute`: within each head, the two RoPE halves interleaved).
pub fn source_row(r: usize, rows: usize, heads: usize) -> usize {
    let hd = rows / heads.max(1);
    let half = hd / 2;
    if half == 0 || hd * heads != rows || !hd.is_multiple_of(2) {
        return r;
    }
    let (h, j) = (r / hd, r % hd);
    // GGUF row 2·k + s is checkpoint row s·half + k.
    h * hd + (j % 2) * half + j / 2
}

/// Heads that `order` permutes over, given the model's query and key/value head counts.
pub fn order_heads(order: RowOrder, n_head: usize, n_kv_head: usize) -> Option<usize> {
    match order {
        RowOrder::Same => None,
        RowOrder::Query => Some(n_head),
        RowOrder::Key => Some(n_kv_head),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, gg, part, order) in [
            (
                "model.text_model.embed_tokens.weight",
                "token_embd.weight",
                Part::Text,
                RowOrder::Same,
            ),
            (
                "lm_head.weight",
                "output.weight",
                Part::Text,
                RowOrder::Same,
            ),
            (
                "model.text_model.layers.11.self_attn.q_proj.weight",
                "blk.11.attn_q.weight",
                Part::Text,
                RowOrder::Query,
            ),
            (
                "model.text_model.layers.0.self_attn.k_proj.weight",
                "blk.0.attn_k.weight",
                Part::Text,
                RowOrder::Key,
            ),
            (
                "model.text_model.layers.3.mlp.down_proj.weight",
                "blk.3.ffn_down.weight",
                Part::Text,
                RowOrder::Same,
            ),
            (
                "model.vision_model.encoder.layers.2.mlp.fc1.bias",
                "v.blk.2.ffn_up.bias",
                Part::Mmproj,
                RowOrder::Same,
            ),
            (
                "model.vision_model.embeddings.patch_embedding.weight",
                "v.patch_embd.weight",
                Part::Mmproj,
                RowOrder::Same,
            ),
            (
                "model.connector.modality_projection.proj.weight",
                "mm.model.fc.weight",
                Part::Mmproj,
                RowOrder::Same,
            ),
        ] {
            assert_eq!(to_gguf(hf), Some((gg.to_string(), part, order)), "{hf}");
            assert_eq!(from_gguf(gg, part), Some((hf.to_string(), order)), "{gg}");
        }
        assert_eq!(
            to_gguf("model.text_model.layers.01.mlp.up_proj.weight"),
            None
        );
        assert_eq!(to_gguf("model.text_model.rotary_emb.inv_freq"), None);
        assert_eq!(from_gguf("blk.0.attn_q.weight", Part::Mmproj), None);
        assert_eq!(from_gguf("v.blk.x.ln1.weight", Part::Mmproj), None);
    }

    #[test]
    fn row_order_matches_llama_cpp_permute() {
        // permute(w, n_head): reshape(n_head, 2, hd/2, ...).swapaxes(1, 2): GGUF row (h, k, s)
        // is checkpoint row (h, s, k).
        let (rows, heads) = (12, 2);
        let hd = 6;
        let mut expected = Vec::new();
        for h in 0..heads {
            for k in 0..hd / 2 {
                for s in 0..2 {
                    expected.push(h * hd + s * (hd / 2) + k);
                }
            }
        }
        let got: Vec<usize> = (0..rows).map(|r| source_row(r, rows, heads)).collect();
        assert_eq!(got, expected);
        // A permutation.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..rows).collect::<Vec<_>>());
    }
}
