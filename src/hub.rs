//! Resolving `--model` to a local directory: a path as is, or a hub repo id through the
//! Hugging Face cache (HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE honoured).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "HuggingFaceTB/SmolVLM-256M-Instruct";

/// Files a model directory needs (the weights are found through config / index).
const REQUIRED: &[&str] = &["config.json", "tokenizer.json", "preprocessor_config.json"];
/// Files used when present.
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// The hub cache directory as huggingface_hub computes it.
pub fn cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    Cache::from_env().path().clone()
}

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("1") | Ok("true") | Ok("yes") | Ok("on")
    )
}

/// Whether `spec` names an existing local directory (else it is treated as a repo id).
pub fn is_local(spec: &str) -> bool {
    Path::new(spec).is_dir()
}

/// Returns a local directory holding the model files of `spec` (a path or `owner/name`).
pub fn resolve(spec: &str, revision: Option<&str>) -> Result<PathBuf> {
    if is_local(spec) {
        return Ok(PathBuf::from(spec));
    }
    if spec.starts_with('.') || spec.starts_with('/') || spec.split('/').count() != 2 {
        return Err(Error::Io {
            path: PathBuf::from(spec),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such model directory (and not a hub repo id of the form owner/name)",
            ),
        });
    }
    let rev = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(spec.to_string(), RepoType::Model, rev.clone());
    let cache = Cache::new(cache_dir());
    if offline() {
        return from_cache(&cache, repo, spec, &rev);
    }
    let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_token(token)
        .with_progress(false)
        .build()
        .map_err(|e| Error::Device(format!("hub client: {e}")))?;
    let r = api.repo(repo.clone());
    let fetch = |f: &str| r.get(f);
    let mut config = None;
    for f in REQUIRED {
        match fetch(f) {
            Ok(p) => {
                if *f == "config.json" {
                    config = Some(p);
                }
            }
            Err(e) => {
                // Offline in practice (no network): fall back to whatever the cache has.
                if let Ok(dir) = from_cache(&cache, repo.clone(), spec, &rev) {
                    return Ok(dir);
                }
                return Err(Error::Io {
                    path: PathBuf::from(spec),
                    source: std::io::Error::other(format!(
                        "cannot fetch {f} of hub repo {spec}@{rev} ({e}); cache {} has no copy",
                        cache_dir().display()
                    )),
                });
            }
        }
    }
    for f in OPTIONAL {
        let _ = fetch(f);
    }
    if fetch("model.safetensors").is_err() {
        let idx = fetch("model.safetensors.index.json").map_err(|e| Error::Io {
            path: PathBuf::from(spec),
            source: std::io::Error::other(format!("hub repo {spec}: no safetensors weights ({e})")),
        })?;
        for shard in index_shards(&idx)? {
            fetch(&shard).map_err(|e| Error::Io {
                path: PathBuf::from(spec),
                source: std::io::Error::other(format!("hub repo {spec}: {shard}: {e}")),
            })?;
        }
    }
    config
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::Internal("hub: config path has no parent".into()))
}

fn from_cache(cache: &Cache, repo: Repo, spec: &str, rev: &str) -> Result<PathBuf> {
    let cr = cache.repo(repo);
    let missing = |what: &str| {
        Error::Io {
        path: PathBuf::from(spec),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "hub repo {spec}@{rev} is not in the cache {} ({what} missing) and HF_HUB_OFFLINE is set or the hub is unreachable",
                cache.path().display()
            ),
        ),
    }
    };
    let mut dir = None;
    for f in REQUIRED {
        let p = cr.get(f).ok_or_else(|| missing(f))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let dir = dir.ok_or_else(|| missing("config.json"))?;
    if !dir.join("model.safetensors").exists() {
        let idx = dir.join("model.safetensors.index.json");
        if !idx.exists() {
            return Err(missing("model.safetensors"));
        }
        for s in index_shards(&idx)? {
            if !dir.join(&s).exists() {
                return Err(missing(&s));
            }
        }
    }
    Ok(dir)
}

fn index_shards(idx: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(idx).map_err(|e| Error::io(idx, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(idx, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(idx, "weight_map: missing"))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_without_cache_names_repo_and_cache() {
        let tmp = std::env::temp_dir().join(format!("smolcap-hub-test-{}", std::process::id()));
        let cache = Cache::new(tmp.clone());
        let repo = Repo::with_revision("org/none".into(), RepoType::Model, "main".into());
        let e = from_cache(&cache, repo, "org/none", "main")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("org/none") && e.contains(&tmp.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(resolve("./does/not/exist", None).is_err());
        assert!(resolve("a/b/c", None).is_err());
    }
}
