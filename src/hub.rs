//! Resolving `--model` to a local directory: a path as is, or a hub repo id through the
//! Hugging Face cache. The environment is read as `huggingface_hub` reads it: HF_ENDPOINT,
//! HF_HOME / HF_HUB_CACHE, HF_TOKEN (else HF_HOME/token), HF_HUB_OFFLINE.

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

/// Whether hf-hub draws its own download bar (on stderr, when that is a terminal).
static DOWNLOAD_PROGRESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns hf-hub's download progress bar on or off for the downloads that follow (off by
/// default: a library should not draw on its host's terminal).
pub fn set_download_progress(on: bool) {
    DOWNLOAD_PROGRESS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Attempts per file after the first; a retry resumes a partial download where it stopped.
const DOWNLOAD_RETRIES: usize = 3;

/// The access token as huggingface_hub finds it: HF_TOKEN, else the file at HF_TOKEN_PATH,
/// else HF_HOME/token (not beside HF_HUB_CACHE).
fn token() -> Option<String> {
    let nonempty = |t: String| Some(t.trim().to_string()).filter(|t| !t.is_empty());
    if let Some(t) = std::env::var("HF_TOKEN").ok().and_then(nonempty) {
        return Some(t);
    }
    match std::env::var_os("HF_TOKEN_PATH") {
        Some(p) => std::fs::read_to_string(p).ok().and_then(nonempty),
        None => Cache::from_env().token(),
    }
}

/// The hub client: the cache at [`cache_dir`], HF_ENDPOINT when set (e.g. a mirror), the
/// token from HF_TOKEN or the cache's `token` file, retries with resume.
fn api(cache: &Cache) -> Result<hf_hub::api::sync::Api> {
    let token = token();
    let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_token(token)
        .with_retries(DOWNLOAD_RETRIES)
        .with_progress(DOWNLOAD_PROGRESS.load(std::sync::atomic::Ordering::Relaxed));
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        if !endpoint.is_empty() {
            b = b.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
    }
    b.build()
        .map_err(|e| Error::Device(format!("hub client: {e}")))
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
    let api = api(&cache)?;
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

/// Whether `spec` has the shape of a hub repo id (`owner/name`, not a path).
pub fn looks_like_repo_id(spec: &str) -> bool {
    !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').count() == 2
        && spec.split('/').all(|p| !p.is_empty())
}

/// The parquet files of hub dataset `id` that belong to `split` (see
/// [`crate::data::file_in_split`]), as `(repo path, local path)` sorted by repo path: listed and
/// downloaded through the hub cache, or found in the cache alone when HF_HUB_OFFLINE is set or
/// the hub cannot be reached.
pub fn dataset_parquet_files(
    id: &str,
    revision: Option<&str>,
    split: &str,
) -> Result<Vec<(String, PathBuf)>> {
    if !looks_like_repo_id(id) {
        return Err(Error::InvalidArgument(format!(
            "{id:?} is not a hub dataset id of the form owner/name"
        )));
    }
    let rev = revision.unwrap_or("main").to_string();
    let repo = Repo::with_revision(id.to_string(), RepoType::Dataset, rev.clone());
    let cache = Cache::new(cache_dir());
    if offline() {
        return dataset_files_from_cache(&cache_dir(), id, &rev, split);
    }
    let api = api(&cache)?;
    let r = api.repo(repo);
    let info = match r.info() {
        Ok(i) => i,
        Err(e) => {
            return dataset_files_from_cache(&cache_dir(), id, &rev, split).map_err(|c| Error::Io {
                path: PathBuf::from(id),
                source: std::io::Error::other(format!(
                    "cannot list hub dataset {id}@{rev} ({e}), and the cache has no copy: {c}"
                )),
            })
        }
    };
    let mut all: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| f.to_ascii_lowercase().ends_with(".parquet"))
        .collect();
    all.sort();
    let picked: Vec<&String> = all
        .iter()
        .filter(|f| crate::data::file_in_split(f, split))
        .collect();
    if picked.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "hub dataset {id}@{rev} has no parquet files for split {split:?} (splits found: {})",
            crate::data::splits_found(&all).join(", ")
        )));
    }
    picked
        .into_iter()
        .map(|f| {
            r.get(f).map(|p| (f.clone(), p)).map_err(|e| Error::Io {
                path: PathBuf::from(id),
                source: std::io::Error::other(format!("hub dataset {id}@{rev}: {f}: {e}")),
            })
        })
        .collect()
}

/// [`dataset_parquet_files`] from the cache at `cache` only (no network).
pub fn dataset_files_from_cache(
    cache: &Path,
    id: &str,
    rev: &str,
    split: &str,
) -> Result<Vec<(String, PathBuf)>> {
    let repo_dir = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let not_cached = |what: String| {
        Error::Io {
        path: PathBuf::from(id),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "hub dataset {id}@{rev} is not in the cache {} ({what}) and HF_HUB_OFFLINE is set or the hub is unreachable",
                cache.display()
            ),
        ),
    }
    };
    let snapshot = match std::fs::read_to_string(repo_dir.join("refs").join(rev)) {
        Ok(hash) => repo_dir.join("snapshots").join(hash.trim()),
        // A commit hash names its snapshot directly.
        Err(_) => repo_dir.join("snapshots").join(rev),
    };
    if !snapshot.is_dir() {
        return Err(not_cached(format!("no snapshot for revision {rev}")));
    }
    let mut all = Vec::new();
    collect_parquet(&snapshot, "", 0, &mut all);
    all.sort();
    let picked: Vec<(String, PathBuf)> = all
        .iter()
        .filter(|f| crate::data::file_in_split(f, split))
        .map(|f| (f.clone(), snapshot.join(f)))
        .collect();
    if picked.is_empty() {
        return Err(not_cached(format!(
            "no parquet files for split {split:?}; cached splits: {}",
            crate::data::splits_found(&all).join(", ")
        )));
    }
    Ok(picked)
}

fn collect_parquet(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            if depth < 4 {
                collect_parquet(&path, &rel, depth + 1, out);
            }
        } else if name.to_ascii_lowercase().ends_with(".parquet") {
            out.push(rel);
        }
    }
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
    let text = crate::fsio::read_text_limited(idx, crate::fsio::MAX_JSON_BYTES)?;
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
    fn dataset_files_from_a_cache_snapshot() {
        let tmp = std::env::temp_dir().join(format!("smolcap-hub-ds-{}", std::process::id()));
        let repo = tmp.join("datasets--org--caps");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(snap.join("data")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        for f in [
            "data/test-00000-of-00002.parquet",
            "data/test-00001-of-00002.parquet",
            "data/train-00000-of-00001.parquet",
            "README.md",
        ] {
            std::fs::write(snap.join(f), b"x").unwrap();
        }
        let got = dataset_files_from_cache(&tmp, "org/caps", "main", "test").unwrap();
        let names: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "data/test-00000-of-00002.parquet",
                "data/test-00001-of-00002.parquet"
            ]
        );
        assert!(got[0]
            .1
            .ends_with("snapshots/abc123/data/test-00000-of-00002.parquet"));
        // A commit hash as the revision; a split that is not there names the cached ones.
        assert_eq!(
            dataset_files_from_cache(&tmp, "org/caps", "abc123", "train")
                .unwrap()
                .len(),
            1
        );
        let e = dataset_files_from_cache(&tmp, "org/caps", "main", "validation")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test, train") && e.contains("org/caps"), "{e}");
        let e = dataset_files_from_cache(&tmp, "org/none", "main", "test")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("org/none") && e.contains(&tmp.display().to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(&tmp).ok();
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(resolve("./does/not/exist", None).is_err());
        assert!(resolve("a/b/c", None).is_err());
    }
}
