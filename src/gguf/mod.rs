//! GGUF, llama.cpp's model files: SmolVLM as llama.cpp stores it (a `llama` text model plus an
//! `mmproj` vision projector), loaded in place of a model directory and written by
//! `smolcap quantize`.

pub mod export;
pub mod file;
pub mod meta;
pub mod names;
pub mod weights;
pub mod writer;

use std::path::{Path, PathBuf};

pub use file::{GgufFile, GgufHeader, GgufLimits, TensorInfo, Value};
pub use weights::GgufWeights;

use crate::error::{Error, Result};

/// Whether `p` names a `.gguf` file.
pub fn is_gguf_path(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn is_mmproj_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_ascii_lowercase().starts_with("mmproj"))
}

/// The file names of `paths`, comma-separated (for messages).
fn file_names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| p.file_name()?.to_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `.gguf` files directly in `dir`, sorted.
fn gguf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if is_gguf_path(&p) && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The `(text, mmproj)` pair that `model` names, if it names GGUF files: a `.gguf` text model
/// (its projector given by `mmproj` or the one `mmproj*.gguf` beside it), or a directory with
/// no `config.json` holding one text GGUF and one `mmproj*.gguf`. `None` for a model directory.
pub fn find_pair(model: &Path, mmproj: Option<&Path>) -> Result<Option<(PathBuf, PathBuf)>> {
    let beside = |dir: &Path, what: &str, text: Option<&Path>| -> Result<PathBuf> {
        if let Some(m) = mmproj {
            return Ok(m.to_path_buf());
        }
        // `mmproj-NAME.gguf` goes with `NAME.gguf` (what `smolcap quantize` writes).
        if let Some(name) = text.and_then(|t| t.file_name()).and_then(|n| n.to_str()) {
            let twin = dir.join(format!("mmproj-{name}"));
            if twin.is_file() {
                return Ok(twin);
            }
        }
        let projs: Vec<PathBuf> = gguf_files(dir)?
            .into_iter()
            .filter(|p| is_mmproj_name(p))
            .collect();
        match projs.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::InvalidArgument(format!(
                "{what}: no mmproj*.gguf vision projector in {}; pass it with --mmproj",
                dir.display()
            ))),
            many => Err(Error::InvalidArgument(format!(
                "{what}: {} mmproj files in {} ({}); pass one with --mmproj",
                many.len(),
                dir.display(),
                file_names(many)
            ))),
        }
    };
    if model.is_file() && is_gguf_path(model) {
        let dir = model.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let proj = beside(dir, &model.display().to_string(), Some(model))?;
        return Ok(Some((model.to_path_buf(), proj)));
    }
    if model.is_dir() && !model.join("config.json").exists() {
        let texts: Vec<PathBuf> = gguf_files(model)?
            .into_iter()
            .filter(|p| !is_mmproj_name(p))
            .collect();
        match texts.as_slice() {
            [] => return Ok(None),
            [one] => {
                let proj = beside(model, &model.display().to_string(), Some(one))?;
                return Ok(Some((one.clone(), proj)));
            }
            many => {
                return Err(Error::InvalidArgument(format!(
                    "{}: {} text GGUF files ({}); name one with --model FILE.gguf",
                    model.display(),
                    many.len(),
                    file_names(many)
                )))
            }
        }
    }
    if mmproj.is_some() {
        return Err(Error::InvalidArgument(format!(
            "--mmproj goes with a .gguf text model, and {} is not one",
            model.display()
        )));
    }
    Ok(None)
}
