//! Caption datasets: (image, caption) rows from parquet (local or hub), COCO/Karpathy JSON or a
//! JSONL manifest, viewed as unique images with all their references (evaluation) or as one
//! sample per row (training).
//!
//! Opening a dataset builds a light index (captions, image ids and where each image lives); no
//! image bytes are read until [`Dataset::images`] streams them, chunk by chunk (parquet: only the
//! image column of the row groups that hold the requested rows). Bad rows — a null or missing
//! caption, a null image, undecodable bytes, a missing image file — are reported as [`BadRow`]s
//! and skipped; only file-level problems (unreadable file, wrong schema) are errors.
//!
//! Sources, chosen by [`DatasetSpec::id`]:
//! - a `.parquet` file, or a directory of parquet files in the Hugging Face layouts
//!   (`data/<split>-*.parquet`, `<split>/*.parquet`, `<config>/<split>/*.parquet`, or file names
//!   that start with the split) with the `jxie/coco_captions` schema: `image`
//!   (`struct<bytes: binary, path: string>`, or plain binary), `caption` (string) and `cocoid`
//!   (integer; `image_id` is accepted too; without either, rows are grouped by `image.path`);
//! - a hub dataset id `owner/name` (its parquet files for the split, through the hub cache; see
//!   [`crate::hub::dataset_parquet_files`]);
//! - a COCO captions annotation file (`{"images":[{id, file_name}], "annotations":[{image_id,
//!   caption}]}`) with images under [`DatasetSpec::image_dir`] (default: the file's directory);
//! - a Karpathy `dataset_coco.json` (`images[].{filepath, filename, split, cocoid, sentences[].raw}`;
//!   split `train` = train + restval, `validation`/`val` = val) with images under
//!   `image_dir/filepath/filename` (default root: the file's directory), or a directory holding
//!   `dataset_coco.json`;
//! - a JSONL manifest of `{"image": path, "caption": text}` lines (paths relative to the manifest;
//!   an optional `"image_id"` groups rows, else the image path does), or a directory holding
//!   `<split>.jsonl`.

pub(crate) mod json;
mod parquet;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::processor::image::{DecodeLimits, SourceImage};

/// An image's identity: a COCO-style number or a string key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(untagged)]
pub enum ImageId {
    /// A numeric id (`cocoid`, `image_id`).
    Num(i64),
    /// A string id (an image path when the source has no ids).
    Str(String),
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Num(n) => write!(f, "{n}"),
            ImageId::Str(s) => f.write_str(s),
        }
    }
}

impl ImageId {
    /// The id as a JSON value (a number or a string), as COCO files hold it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ImageId::Num(n) => serde_json::Value::from(*n),
            ImageId::Str(s) => serde_json::Value::from(s.as_str()),
        }
    }

    /// Reads a JSON id: an integer or a string (other values give `None`).
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::Number(n) => n.as_i64().map(ImageId::Num),
            serde_json::Value::String(s) => Some(ImageId::Str(s.clone())),
            _ => None,
        }
    }
}

/// Where an image's encoded bytes live.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageRef {
    /// Row `row` (counted from 0 within the file) of the dataset's parquet file `file`.
    Parquet {
        /// Index into the dataset's parquet files.
        file: usize,
        /// Row within that file.
        row: usize,
    },
    /// An image file on disk.
    File(PathBuf),
}

impl AsRef<ImageRef> for ImageRef {
    fn as_ref(&self) -> &ImageRef {
        self
    }
}

/// One (image, caption) row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Position of the row in the source (0-based, bad rows counted).
    pub row: usize,
    /// The image's id (rows with the same id show the same image).
    pub id: ImageId,
    /// The caption text.
    pub caption: String,
    /// Where the image is.
    pub image: ImageRef,
    /// A short display name of the image (its file name or path in the source).
    pub name: String,
}

impl AsRef<ImageRef> for Sample {
    fn as_ref(&self) -> &ImageRef {
        &self.image
    }
}

/// One unique image with all its reference captions.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGroup {
    /// The image's id.
    pub id: ImageId,
    /// Where the image is (the first row's image).
    pub image: ImageRef,
    /// A short display name of the image.
    pub name: String,
    /// Every caption of the image, in row order.
    pub references: Vec<String>,
    /// The rows the references come from.
    pub rows: Vec<usize>,
}

impl AsRef<ImageRef> for ImageGroup {
    fn as_ref(&self) -> &ImageRef {
        &self.image
    }
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadRow {
    /// Where it is (`file row N`, `file line N`, `images[i].sentences[j]`, an image path, ...).
    pub location: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// Which kind of source a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Parquet files (local or from the hub).
    Parquet,
    /// A COCO captions annotation file.
    CocoJson,
    /// A Karpathy-split `dataset_coco.json`.
    Karpathy,
    /// A JSONL manifest.
    Jsonl,
}

/// What to open: see the module documentation for how `id` picks the source.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// A path (file or directory) or a hub dataset id `owner/name`.
    pub id: String,
    /// The split (`train`, `validation`, `test`, ...); ignored by single files without splits.
    pub split: String,
    /// Image directory for COCO annotation files / image root for Karpathy JSON.
    pub image_dir: Option<PathBuf>,
    /// Hub revision of a hub dataset (default `main`).
    pub revision: Option<String>,
    /// Longest caption kept, in bytes: a longer row becomes a [`BadRow`] (default
    /// [`DEFAULT_MAX_CAPTION_BYTES`]), so no huge caption ever reaches a tokenizer or a metric.
    pub max_caption_bytes: usize,
}

/// Default of [`DatasetSpec::max_caption_bytes`] (64 KiB; COCO captions are under 1 KiB).
pub const DEFAULT_MAX_CAPTION_BYTES: usize = 64 << 10;

/// Largest dataset index file read (COCO / Karpathy JSON, JSONL manifest); the Karpathy
/// `dataset_coco.json` of all COCO is about 150 MB.
pub const MAX_INDEX_FILE_BYTES: u64 = 256 << 20;

pub use json::MAX_ENTRIES;

impl DatasetSpec {
    /// A spec for `id` and `split` with no image dir and the default revision.
    pub fn new(id: impl Into<String>, split: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            split: split.into(),
            image_dir: None,
            revision: None,
            max_caption_bytes: DEFAULT_MAX_CAPTION_BYTES,
        }
    }
}

/// Which rows a view keeps, and in what order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Select {
    /// Shuffle with this seed first (SplitMix64 + Fisher–Yates: the same order on every
    /// platform and version); `None` keeps the source order.
    pub shuffle_seed: Option<u64>,
    /// Keep only the first this-many distinct images (after shuffling).
    pub max_images: Option<usize>,
    /// Keep only the first this-many rows (row view only).
    pub max_samples: Option<usize>,
}

/// An opened caption dataset: the index of its good rows and the rows skipped while indexing.
pub struct Dataset {
    kind: SourceKind,
    description: String,
    samples: Vec<Sample>,
    bad: Vec<BadRow>,
    parquet: Option<parquet::ParquetFiles>,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("kind", &self.kind)
            .field("description", &self.description)
            .field("rows", &self.samples.len())
            .field("bad_rows", &self.bad.len())
            .finish()
    }
}

impl Dataset {
    /// Opens the dataset `spec` names (see the module documentation).
    pub fn open(spec: &DatasetSpec) -> Result<Self> {
        if spec.max_caption_bytes == 0 {
            return Err(Error::InvalidArgument(
                "max_caption_bytes must be at least 1".into(),
            ));
        }
        let mut ds = Self::open_any(spec)?;
        ds.reject_long_captions(spec.max_caption_bytes);
        Ok(ds)
    }

    /// Moves rows whose caption is longer than `max` bytes to the bad rows.
    fn reject_long_captions(&mut self, max: usize) {
        if self.samples.iter().all(|s| s.caption.len() <= max) {
            return;
        }
        let (keep, long): (Vec<Sample>, Vec<Sample>) = std::mem::take(&mut self.samples)
            .into_iter()
            .partition(|s| s.caption.len() <= max);
        self.samples = keep;
        self.bad.extend(long.into_iter().map(|s| BadRow {
            location: format!("row {} ({})", s.row, s.name),
            reason: format!(
                "caption of {} bytes exceeds the limit of {max} (max_caption_bytes)",
                s.caption.len()
            ),
        }));
    }

    fn open_any(spec: &DatasetSpec) -> Result<Self> {
        let path = Path::new(&spec.id);
        if path.is_dir() {
            return Self::open_dir(path, spec);
        }
        if crate::fsio::regular_file_exists(path)? {
            return Self::open_file(path, spec);
        }
        if crate::hub::looks_like_repo_id(&spec.id) {
            let files =
                crate::hub::dataset_parquet_files(&spec.id, spec.revision.as_deref(), &spec.split)?;
            let labelled = files
                .into_iter()
                .map(|(rel, p)| (p, rel))
                .collect::<Vec<_>>();
            let desc = format!(
                "hub dataset {} split {} ({} parquet file(s))",
                spec.id,
                spec.split,
                labelled.len()
            );
            return Self::from_parquet(labelled, desc);
        }
        Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such dataset file or directory (and not a hub dataset id of the form owner/name)",
            ),
        ))
    }

    fn open_file(path: &Path, spec: &DatasetSpec) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "parquet" => Self::from_parquet(
                vec![(path.to_path_buf(), display_name(path))],
                format!("parquet file {}", path.display()),
            ),
            "jsonl" | "ndjson" => Self::from_jsonl(path),
            "json" => {
                let dir = spec.image_dir.clone().unwrap_or_else(|| parent_dir(path));
                json::open_json(path, &dir, &spec.split)
            }
            _ => Err(Error::format(
                path,
                "unknown dataset file type (expected .parquet, .json or .jsonl)",
            )),
        }
    }

    fn open_dir(dir: &Path, spec: &DatasetSpec) -> Result<Self> {
        let all = list_parquet(dir)?;
        if !all.is_empty() {
            let picked: Vec<(PathBuf, String)> = all
                .iter()
                .filter(|rel| file_in_split(rel, &spec.split))
                .map(|rel| (dir.join(rel), rel.clone()))
                .collect();
            if picked.is_empty() {
                return Err(Error::format(
                    dir,
                    format!(
                        "no parquet files for split {:?} (splits found: {})",
                        spec.split,
                        splits_found(&all).join(", ")
                    ),
                ));
            }
            let desc = format!(
                "parquet dataset {} split {} ({} file(s))",
                dir.display(),
                spec.split,
                picked.len()
            );
            return Self::from_parquet(picked, desc);
        }
        let karpathy = dir.join("dataset_coco.json");
        if crate::fsio::regular_file_exists(&karpathy)? {
            let root = spec.image_dir.clone().unwrap_or_else(|| dir.to_path_buf());
            return Self::from_karpathy(&karpathy, &root, &spec.split);
        }
        let manifest = dir.join(format!("{}.jsonl", spec.split));
        if crate::fsio::regular_file_exists(&manifest)? {
            return Self::from_jsonl(&manifest);
        }
        Err(Error::format(
            dir,
            format!(
                "not a caption dataset: no parquet files, no dataset_coco.json, no {}.jsonl",
                spec.split
            ),
        ))
    }

    /// Opens parquet files (`(path, label)`; the label names the file in messages).
    pub fn from_parquet(files: Vec<(PathBuf, String)>, description: String) -> Result<Self> {
        let (pf, samples, bad) = parquet::ParquetFiles::open(files)?;
        Ok(Self {
            kind: SourceKind::Parquet,
            description,
            samples,
            bad,
            parquet: Some(pf),
        })
    }

    /// Opens a COCO captions annotation file with images under `image_dir`.
    pub fn from_coco_json(path: &Path, image_dir: &Path) -> Result<Self> {
        json::open_coco(path, image_dir)
    }

    /// Opens a Karpathy `dataset_coco.json` with images under `image_root/filepath/filename`.
    pub fn from_karpathy(path: &Path, image_root: &Path, split: &str) -> Result<Self> {
        json::open_karpathy(path, image_root, split)
    }

    /// Opens a JSONL manifest of `{"image", "caption"}` lines.
    pub fn from_jsonl(path: &Path) -> Result<Self> {
        json::open_jsonl(path)
    }

    fn from_index(
        kind: SourceKind,
        description: String,
        samples: Vec<Sample>,
        bad: Vec<BadRow>,
    ) -> Self {
        Self {
            kind,
            description,
            samples,
            bad,
            parquet: None,
        }
    }

    /// The kind of source.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// One line saying what was opened.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Every good row, in source order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Rows skipped while indexing (null/missing captions, null images, unknown image ids...).
    pub fn bad_rows(&self) -> &[BadRow] {
        &self.bad
    }

    /// Unique images in first-seen order, each with all its captions; then shuffled (groups, not
    /// rows) and limited to `max_images` per `sel` (`max_samples` does not apply here).
    pub fn grouped(&self, sel: &Select) -> Vec<ImageGroup> {
        let mut groups: Vec<ImageGroup> = Vec::new();
        let mut at: HashMap<&ImageId, usize> = HashMap::new();
        for s in &self.samples {
            match at.get(&s.id) {
                Some(&g) => {
                    groups[g].references.push(s.caption.clone());
                    groups[g].rows.push(s.row);
                }
                None => {
                    at.insert(&s.id, groups.len());
                    groups.push(ImageGroup {
                        id: s.id.clone(),
                        image: s.image.clone(),
                        name: s.name.clone(),
                        references: vec![s.caption.clone()],
                        rows: vec![s.row],
                    });
                }
            }
        }
        if let Some(seed) = sel.shuffle_seed {
            shuffle(&mut groups, seed);
        }
        if let Some(n) = sel.max_images {
            groups.truncate(n);
        }
        groups
    }

    /// One sample per row: shuffled (rows) when `sel` has a seed, then restricted to the rows of
    /// the first `max_images` distinct images, then truncated to `max_samples`.
    pub fn rows(&self, sel: &Select) -> Vec<Sample> {
        let mut rows = self.samples.clone();
        if let Some(seed) = sel.shuffle_seed {
            shuffle(&mut rows, seed);
        }
        if let Some(n) = sel.max_images {
            let mut keep: HashSet<ImageId> = HashSet::new();
            rows.retain(|s| {
                if keep.contains(&s.id) {
                    return true;
                }
                if keep.len() < n {
                    keep.insert(s.id.clone());
                    return true;
                }
                false
            });
        }
        if let Some(n) = sel.max_samples {
            rows.truncate(n);
        }
        rows
    }

    /// Names an image's location for messages (`data/test-0.parquet row 7`, a path).
    pub fn locate(&self, image: &ImageRef) -> String {
        match image {
            ImageRef::Parquet { file, row } => match &self.parquet {
                Some(p) => format!("{} row {row}", p.label(*file)),
                None => format!("parquet file {file} row {row}"),
            },
            ImageRef::File(p) => p.display().to_string(),
        }
    }

    /// Reads the encoded bytes of `images` (parquet: one read per row group holding any of
    /// them). The outer error is a file-level failure; the inner ones are per image (null bytes,
    /// missing image file, size over `max_bytes`).
    pub fn read_bytes(&self, images: &[&ImageRef], max_bytes: u64) -> Result<Vec<Result<Vec<u8>>>> {
        let mut out: Vec<Option<Result<Vec<u8>>>> = (0..images.len()).map(|_| None).collect();
        let mut in_parquet: Vec<(usize, usize, usize)> = Vec::new();
        for (i, r) in images.iter().enumerate() {
            match r {
                ImageRef::File(p) => out[i] = Some(read_image_file(p, max_bytes)),
                ImageRef::Parquet { file, row } => in_parquet.push((i, *file, *row)),
            }
        }
        if !in_parquet.is_empty() {
            let pf = self.parquet.as_ref().ok_or_else(|| {
                Error::Internal("parquet image reference in a dataset without parquet files".into())
            })?;
            let wanted: Vec<(usize, usize)> = in_parquet.iter().map(|&(_, f, r)| (f, r)).collect();
            let got = pf.read_images(&wanted, max_bytes)?;
            for &(i, f, r) in &in_parquet {
                out[i] = Some(match got.get(&(f, r)) {
                    Some(Ok(b)) => Ok(b.clone()),
                    Some(Err(e)) => Err(clone_error(e)),
                    None => Err(Error::Internal(format!(
                        "{} row {r}: not returned by the parquet reader",
                        pf.label(f)
                    ))),
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::Internal("image not read".into()))))
            .collect())
    }

    /// Streams the decoded images of `items` in order, reading and decoding `chunk` at a time
    /// (decoding in parallel). Each item is `Ok((index into items, image or the per-image
    /// error))`; a file-level failure ends the stream with `Err`.
    pub fn images<'a, T: AsRef<ImageRef>>(
        &'a self,
        items: &'a [T],
        limits: DecodeLimits,
        chunk: usize,
    ) -> ImageStream<'a, T> {
        ImageStream {
            ds: self,
            items,
            next: 0,
            chunk: chunk.max(1),
            limits,
            ready: std::collections::VecDeque::new(),
            failed: false,
        }
    }
}

/// Decoded images of a dataset's items, produced lazily (see [`Dataset::images`]).
pub struct ImageStream<'a, T> {
    ds: &'a Dataset,
    items: &'a [T],
    next: usize,
    chunk: usize,
    limits: DecodeLimits,
    ready: std::collections::VecDeque<(usize, Result<SourceImage>)>,
    failed: bool,
}

impl<T: AsRef<ImageRef>> Iterator for ImageStream<'_, T> {
    type Item = Result<(usize, Result<SourceImage>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.ready.is_empty() && self.next < self.items.len() {
            let start = self.next;
            let end = (start + self.chunk).min(self.items.len());
            self.next = end;
            let refs: Vec<&ImageRef> = self.items[start..end].iter().map(|t| t.as_ref()).collect();
            let bytes = match self.ds.read_bytes(&refs, self.limits.max_encoded_bytes) {
                Ok(b) => b,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let limits = self.limits;
            let decoded: Vec<Result<SourceImage>> = bytes
                .into_par_iter()
                .map(|b| b.and_then(|b| SourceImage::decode(&b, &limits)))
                .collect();
            self.ready
                .extend(decoded.into_iter().enumerate().map(|(k, r)| (start + k, r)));
        }
        self.ready.pop_front().map(Ok)
    }
}

fn read_image_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    crate::fsio::read_limited(path, max_bytes)
}

/// A copy of a per-image error (same variant and message).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Limit(m) => Error::Limit(m.clone()),
        Error::Image(m) => Error::Image(m.clone()),
        other => Error::Internal(other.to_string()),
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Shuffles `v` with SplitMix64-driven Fisher–Yates (stable across platforms and versions).
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        // Multiply-shift maps 64 random bits onto 0..=i without modulo bias worth noticing.
        let j = ((u128::from(next()) * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

/// Whether the parquet file at `rel` ('/'-separated, relative to the dataset root) belongs to
/// `split`: a directory of its path is named `split`, or its file name starts with `split`
/// followed by `-`, `_`, `.`, a space or a digit (the Hugging Face `datasets` conventions).
pub fn file_in_split(rel: &str, split: &str) -> bool {
    if !rel.to_ascii_lowercase().ends_with(".parquet") || split.is_empty() {
        return false;
    }
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((name, dirs)) = parts.split_last() else {
        return false;
    };
    if dirs.contains(&split) {
        return true;
    }
    name.strip_prefix(split).is_some_and(|rest| {
        rest.starts_with(|c: char| matches!(c, '-' | '_' | '.' | ' ') || c.is_ascii_digit())
    })
}

/// The split names that parquet files at `rels` suggest (for error messages): the parent
/// directory's name, or for files directly in the root or in `data/`, the file name up to its
/// first separator or digit.
pub fn splits_found(rels: &[String]) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for rel in rels {
        let parts: Vec<&str> = rel.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            continue;
        };
        let candidate = match dirs.last() {
            Some(d) if *d != "data" => (*d).to_string(),
            _ => name
                .split(|c: char| matches!(c, '-' | '_' | '.' | ' ') || c.is_ascii_digit())
                .next()
                .unwrap_or("")
                .to_string(),
        };
        if !candidate.is_empty() {
            out.insert(candidate);
        }
    }
    out.into_iter().collect()
}

/// Parquet files under `dir` (depth ≤ 4, hidden entries skipped), as sorted relative paths.
fn list_parquet(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    walk(dir, "", 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            if depth < 4 {
                walk(&path, &rel, depth + 1, out)?;
            }
        } else if name.to_ascii_lowercase().ends_with(".parquet") {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
