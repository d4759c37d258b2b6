//! Device and dtype selection from user strings (`cpu`, `cuda:0`, `metal`; `f32`, `bf16`, `f16`).

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses a device name; GPU names need the matching cargo feature.
pub fn parse_device(name: &str) -> Result<Device> {
    let n = name.trim().to_ascii_lowercase();
    if n == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(rest) = n.strip_prefix("cuda") {
        let ordinal = match rest.strip_prefix(':') {
            Some(i) => i.parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!("device {name:?}: bad CUDA ordinal"))
            })?,
            None if rest.is_empty() => 0,
            None => return Err(Error::InvalidArgument(format!("unknown device {name:?}"))),
        };
        if !cfg!(feature = "cuda") {
            return Err(Error::Unsupported(format!(
                "device {name:?}: this build has no CUDA support (cargo feature `cuda`)"
            )));
        }
        return Device::new_cuda(ordinal).map_err(|e| Error::Device(e.to_string()));
    }
    if n == "metal" {
        if !cfg!(feature = "metal") {
            return Err(Error::Unsupported(format!(
                "device {name:?}: this build has no Metal support (cargo feature `metal`)"
            )));
        }
        return Device::new_metal(0).map_err(|e| Error::Device(e.to_string()));
    }
    Err(Error::InvalidArgument(format!(
        "unknown device {name:?} (expected cpu, cuda[:N] or metal)"
    )))
}

/// Parses a compute dtype name.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "fp32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "fp16" | "half" => Ok(DType::F16),
        other => Err(Error::InvalidArgument(format!(
            "unknown dtype {other:?} (expected f32, bf16 or f16)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("tpu").is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("int3").is_err());
        if !cfg!(feature = "cuda") {
            assert!(matches!(parse_device("cuda:0"), Err(Error::Unsupported(_))));
        }
    }
}
