//! Which storage each part of the model's weights gets: parsed from `--quantize`, the C API's
//! `smolcap_load_params.quantize` and Python's `quantize=`.

use super::ggml::GgmlKind;
use super::nf4::Nf4Config;
use crate::error::{Error, Result};

/// How one weight is stored when it is not dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantChoice {
    /// bitsandbytes' NF4 (the QLoRA base).
    Nf4(Nf4Config),
    /// A GGML block format.
    Ggml(GgmlKind),
}

/// The storage of each part's weights; `None` keeps a part dense in the compute dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantSpec {
    /// The SigLIP encoder layers' linear weights.
    pub vision: Option<QuantChoice>,
    /// The connector's projection.
    pub connector: Option<QuantChoice>,
    /// The decoder layers' linear weights.
    pub text: Option<QuantChoice>,
    /// The token embedding table (rows dequantised on lookup).
    pub embed: Option<QuantChoice>,
    /// The output head; a head tied to the embedding is one table, stored as this says.
    pub lm_head: Option<QuantChoice>,
}

/// The part names accepted in a spec, in [`QuantSpec`]'s field order.
pub const PARTS: [&str; 5] = ["vision", "connector", "text", "embed", "lm_head"];

fn parse_kind(s: &str) -> Result<Option<QuantChoice>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("f32") || s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if s.eq_ignore_ascii_case("nf4") {
        return Ok(Some(QuantChoice::Nf4(Nf4Config {
            blocksize: 64,
            double_quant: true,
        })));
    }
    match GgmlKind::parse(s) {
        Some(k) => Ok(Some(QuantChoice::Ggml(k))),
        None => Err(Error::InvalidArgument(format!(
            "{s:?} is not a weight format (use f32, f16, bf16, q8_0, q6_k, q5_0, q4_k, q4_0 or nf4)"
        ))),
    }
}

impl QuantSpec {
    /// Parses `TYPE[,PART=TYPE...]`: `TYPE` (a GGML format or `nf4`) sets every part, except
    /// that the output head (and a tied embedding) stays at 6 bits when `TYPE` has fewer
    /// (llama.cpp's choice for `output.weight`, q8_0 where a row is no multiple of 256); `PART=TYPE` then overrides one
    /// part (`vision`, `connector`, `text`, `embed`, `lm_head`; `f32` keeps it dense). An empty
    /// string or `f32` is the dense model.
    pub fn parse(s: &str) -> Result<Self> {
        let mut spec = QuantSpec::default();
        for (i, item) in s.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                if s.trim().is_empty() {
                    break;
                }
                return Err(Error::InvalidArgument(format!(
                    "empty item in the weight format list {s:?}"
                )));
            }
            match item.split_once('=') {
                None if i == 0 => {
                    let c = parse_kind(item)?;
                    let head = match c {
                        Some(QuantChoice::Ggml(k)) if k.bits_per_weight() >= 6.5 => c,
                        Some(_) => Some(QuantChoice::Ggml(GgmlKind::Q6K)),
                        None => None,
                    };
                    spec = QuantSpec {
                        vision: c,
                        connector: c,
                        text: c,
                        embed: c,
                        lm_head: head,
                    };
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "{item:?} in {s:?}: only the first item may be a bare format; name the part (PART=FORMAT)"
                    )))
                }
                Some((part, kind)) => {
                    let c = parse_kind(kind)?;
                    match part.trim() {
                        "vision" => spec.vision = c,
                        "connector" => spec.connector = c,
                        "text" => spec.text = c,
                        "embed" => spec.embed = c,
                        "lm_head" => spec.lm_head = c,
                        other => {
                            return Err(Error::InvalidArgument(format!(
                                "{other:?} is not a model part (use one of {})",
                                PARTS.join(", ")
                            )))
                        }
                    }
                }
            }
        }
        Ok(spec)
    }

    /// Only the decoder layers in NF4 (the QLoRA base of bitsandbytes' `load_in_4bit`).
    pub fn nf4_decoder(cfg: Nf4Config) -> Self {
        QuantSpec {
            text: Some(QuantChoice::Nf4(cfg)),
            ..Default::default()
        }
    }

    /// Whether every part is dense.
    pub fn is_dense(&self) -> bool {
        *self == QuantSpec::default()
    }

    /// `part=format` for every part (`f32` for dense ones), e.g. for reports.
    pub fn describe(&self) -> String {
        let name = |c: &Option<QuantChoice>| match c {
            None => "f32",
            Some(QuantChoice::Nf4(_)) => "nf4",
            Some(QuantChoice::Ggml(k)) => k.name(),
        };
        let parts = [
            &self.vision,
            &self.connector,
            &self.text,
            &self.embed,
            &self.lm_head,
        ];
        PARTS
            .iter()
            .zip(parts)
            .map(|(p, c)| format!("{p}={}", name(c)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_sets_every_part_and_keeps_the_head_at_six_bits() {
        let g = |k| Some(QuantChoice::Ggml(k));
        assert!(QuantSpec::parse("").unwrap().is_dense());
        assert!(QuantSpec::parse("f32").unwrap().is_dense());
        let s = QuantSpec::parse("q4_0").unwrap();
        assert_eq!(s.text, g(GgmlKind::Q4_0));
        assert_eq!(s.vision, g(GgmlKind::Q4_0));
        assert_eq!(s.embed, g(GgmlKind::Q4_0));
        assert_eq!(s.lm_head, g(GgmlKind::Q6K));
        let s = QuantSpec::parse("q8_0").unwrap();
        assert_eq!(s.lm_head, g(GgmlKind::Q8_0));
        assert_eq!(
            QuantSpec::parse("q4_k, vision=f32,lm_head=q8_0")
                .unwrap()
                .describe(),
            "vision=f32,connector=q4_k,text=q4_k,embed=q4_k,lm_head=q8_0"
        );
        let s = QuantSpec::parse("nf4").unwrap();
        assert!(matches!(s.vision, Some(QuantChoice::Nf4(_))));
        assert_eq!(s.lm_head, g(GgmlKind::Q6K));
        let s = QuantSpec::parse("text=bf16").unwrap();
        assert_eq!((s.text, s.vision), (g(GgmlKind::Bf16), None));
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        for (s, want) in [
            ("q3_k", "not a weight format"),
            ("q4_0,q8_0", "only the first item"),
            ("q4_0,head=q8_0", "not a model part"),
            ("q4_0,,text=f32", "empty item"),
            ("text=q9", "not a weight format"),
        ] {
            let e = QuantSpec::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
