//! JSON caption sources: COCO captions annotations, Karpathy's `dataset_coco.json` and JSONL
//! manifests. Image files are not touched until they are loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{BadRow, Dataset, ImageId, ImageRef, Sample, SourceKind};
use crate::error::{Error, Result};

/// Most array entries in one JSON file (images, annotations and sentences together) and most
/// rows of a JSONL manifest: all of COCO is ~617,000 captions. Counted while parsing, so a file
/// of millions of tiny entries cannot expand into gigabytes of parsed structures.
pub const MAX_ENTRIES: usize = 2_000_000;

thread_local! {
    /// Entries the parse running on this thread may still create (see [`parse_bounded`]).
    static ENTRIES_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(MAX_ENTRIES) };
}

/// Parses `text` with a fresh budget of [`MAX_ENTRIES`] array entries for all the
/// [`Bounded`] arrays in it.
pub(crate) fn parse_bounded<T: serde::de::DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    ENTRIES_LEFT.with(|c| c.set(MAX_ENTRIES));
    let r = serde_json::from_str(text);
    ENTRIES_LEFT.with(|c| c.set(MAX_ENTRIES));
    r
}

/// A JSON array whose entries count against the parse's budget of [`MAX_ENTRIES`]: past it
/// the parse fails before more are allocated.
pub(crate) struct Bounded<T>(pub(crate) Vec<T>);

impl<T> Default for Bounded<T> {
    fn default() -> Self {
        Bounded(Vec::new())
    }
}

impl<T> std::ops::Deref for Bounded<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> IntoIterator for Bounded<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Bounded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    let left = ENTRIES_LEFT.with(|c| {
                        let n = c.get();
                        c.set(n.saturating_sub(1));
                        n
                    });
                    if left == 0 {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_ENTRIES} array entries in the file (limit)"
                        )));
                    }
                    v.push(x);
                }
                Ok(Bounded(v))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A JSON value kept only when it is a scalar (number, string, bool, null): an array or object
/// is skipped while parsing (no allocation) and stands as an empty one, so a field that should
/// hold an id or a caption cannot expand into a huge parsed structure.
pub(crate) struct Lean(pub(crate) Value);

impl std::ops::Deref for Lean {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Lean {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Lean;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::String(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::String(v)))
            }
            fn visit_unit<E>(self) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::Null))
            }
            fn visit_none<E>(self) -> std::result::Result<Lean, E> {
                Ok(Lean(Value::Null))
            }
            fn visit_some<D2: serde::Deserializer<'de>>(
                self,
                d: D2,
            ) -> std::result::Result<Lean, D2::Error> {
                Lean::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Lean, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lean(Value::Array(Vec::new())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Lean, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Lean(Value::Object(serde_json::Map::new())))
            }
        }
        d.deserialize_any(V)
    }
}

/// Either JSON layout; which one it is follows from the keys present.
#[derive(Deserialize)]
struct AnyJson {
    #[serde(default)]
    images: Bounded<JsonImage>,
    annotations: Option<Bounded<CocoAnnotation>>,
}

#[derive(Deserialize)]
struct JsonImage {
    // COCO
    id: Option<Lean>,
    file_name: Option<String>,
    // Karpathy
    filepath: Option<String>,
    filename: Option<String>,
    split: Option<String>,
    cocoid: Option<Lean>,
    imgid: Option<Lean>,
    sentences: Option<Bounded<Sentence>>,
}

#[derive(Deserialize)]
struct Sentence {
    raw: Option<Lean>,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: Option<Lean>,
    caption: Option<Lean>,
}

fn read_json(path: &Path) -> Result<AnyJson> {
    let text = crate::fsio::read_text_limited(path, super::MAX_INDEX_FILE_BYTES)?;
    parse_bounded(&text).map_err(|e| {
        Error::format(
            path,
            format!("not a COCO captions or Karpathy dataset JSON object: {e}"),
        )
    })
}

/// Opens a `.json` file as COCO annotations (it has `annotations`) or Karpathy (its images have
/// `sentences`).
pub(super) fn open_json(path: &Path, image_dir: &Path, split: &str) -> Result<Dataset> {
    let j = read_json(path)?;
    if j.annotations.is_some() {
        coco(path, image_dir, j)
    } else if j.images.iter().any(|i| i.sentences.is_some()) {
        karpathy(path, image_dir, split, j)
    } else {
        Err(Error::format(
            path,
            "neither a COCO captions file (no \"annotations\") nor a Karpathy dataset (no \"images[].sentences\")",
        ))
    }
}

pub(super) fn open_coco(path: &Path, image_dir: &Path) -> Result<Dataset> {
    let j = read_json(path)?;
    if j.annotations.is_none() {
        return Err(Error::format(path, "no \"annotations\" array"));
    }
    coco(path, image_dir, j)
}

pub(super) fn open_karpathy(path: &Path, root: &Path, split: &str) -> Result<Dataset> {
    let j = read_json(path)?;
    karpathy(path, root, split, j)
}

fn coco(path: &Path, image_dir: &Path, j: AnyJson) -> Result<Dataset> {
    let mut files: HashMap<ImageId, String> = HashMap::new();
    for (k, im) in j.images.iter().enumerate() {
        let id = im
            .id
            .as_deref()
            .and_then(ImageId::from_json)
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("images[{k}].id: missing or not a number/string"),
                )
            })?;
        let name = im
            .file_name
            .clone()
            .ok_or_else(|| Error::format(path, format!("images[{k}].file_name: missing")))?;
        files.insert(id, name);
    }
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    for (k, a) in j.annotations.unwrap_or_default().into_iter().enumerate() {
        let location = format!("{} annotations[{k}]", path.display());
        let mut reject = |reason: String| {
            bad.push(BadRow {
                location: location.clone(),
                reason,
            })
        };
        let Some(id) = a.image_id.as_deref().and_then(ImageId::from_json) else {
            reject("image_id missing or not a number/string".into());
            continue;
        };
        let Some(caption) = a.caption.as_deref().and_then(Value::as_str) else {
            reject("caption missing or not a string".into());
            continue;
        };
        let Some(file) = files.get(&id) else {
            reject(format!("image_id {id} is not in \"images\""));
            continue;
        };
        samples.push(Sample {
            row: k,
            id,
            caption: caption.to_string(),
            image: ImageRef::File(image_dir.join(file)),
            name: file.clone(),
        });
    }
    let desc = format!(
        "COCO captions {} (images in {})",
        path.display(),
        image_dir.display()
    );
    Ok(Dataset::from_index(
        SourceKind::CocoJson,
        desc,
        samples,
        bad,
    ))
}

/// Karpathy split names for a requested split (`train` includes `restval`, as in
/// `jxie/coco_captions`).
fn karpathy_splits(split: &str) -> &'static [&'static str] {
    match split {
        "train" => &["train", "restval"],
        "validation" | "val" => &["val"],
        "test" => &["test"],
        "restval" => &["restval"],
        _ => &[],
    }
}

fn karpathy(path: &Path, root: &Path, split: &str, j: AnyJson) -> Result<Dataset> {
    let wanted = karpathy_splits(split);
    if wanted.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: split {split:?} (a Karpathy dataset has train, validation/val, test, restval)",
            path.display()
        )));
    }
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    let mut row = 0usize;
    for (k, im) in j.images.iter().enumerate() {
        let sentences = im.sentences.as_deref().unwrap_or_default();
        let in_split = im.split.as_deref().is_some_and(|s| wanted.contains(&s));
        if !in_split {
            row += sentences.len();
            continue;
        }
        let Some(filename) = &im.filename else {
            bad.push(BadRow {
                location: format!("{} images[{k}]", path.display()),
                reason: "filename missing".into(),
            });
            row += sentences.len();
            continue;
        };
        let rel: PathBuf = match &im.filepath {
            Some(fp) => Path::new(fp).join(filename),
            None => PathBuf::from(filename),
        };
        let id = im
            .cocoid
            .as_deref()
            .or(im.imgid.as_deref())
            .and_then(ImageId::from_json)
            .unwrap_or_else(|| ImageId::Str(rel.display().to_string()));
        for (s, sent) in sentences.iter().enumerate() {
            let r = row;
            row += 1;
            match sent.raw.as_deref().and_then(Value::as_str) {
                Some(raw) => samples.push(Sample {
                    row: r,
                    id: id.clone(),
                    caption: raw.to_string(),
                    image: ImageRef::File(root.join(&rel)),
                    name: rel.display().to_string(),
                }),
                None => bad.push(BadRow {
                    location: format!("{} images[{k}].sentences[{s}]", path.display()),
                    reason: "raw missing or not a string".into(),
                }),
            }
        }
    }
    let desc = format!(
        "Karpathy {} split {split} (image root {})",
        path.display(),
        root.display()
    );
    Ok(Dataset::from_index(
        SourceKind::Karpathy,
        desc,
        samples,
        bad,
    ))
}

#[derive(Deserialize)]
struct ManifestLine {
    image: Option<Lean>,
    caption: Option<Lean>,
    image_id: Option<Lean>,
}

pub(super) fn open_jsonl(path: &Path) -> Result<Dataset> {
    let text = crate::fsio::read_text_limited(path, super::MAX_INDEX_FILE_BYTES)?;
    let dir = super::parent_dir(path);
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    let mut row = 0usize;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if row >= MAX_ENTRIES {
            return Err(Error::Limit(format!(
                "{}: more than {MAX_ENTRIES} rows",
                path.display()
            )));
        }
        let r = row;
        row += 1;
        let location = format!("{} line {}", path.display(), n + 1);
        let mut reject = |reason: String| {
            bad.push(BadRow {
                location: location.clone(),
                reason,
            })
        };
        let m: ManifestLine = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(e) => {
                reject(format!("not a JSON object: {e}"));
                continue;
            }
        };
        let Some(image) = m.image.as_deref().and_then(Value::as_str) else {
            reject("\"image\" missing or not a string".into());
            continue;
        };
        let Some(caption) = m.caption.as_deref().and_then(Value::as_str) else {
            reject("\"caption\" missing or not a string".into());
            continue;
        };
        let id = match &m.image_id {
            Some(v) => match ImageId::from_json(v) {
                Some(id) => id,
                None => {
                    reject("\"image_id\" is not a number or a string".into());
                    continue;
                }
            },
            None => ImageId::Str(image.to_string()),
        };
        samples.push(Sample {
            row: r,
            id,
            caption: caption.to_string(),
            image: ImageRef::File(dir.join(image)),
            name: image.to_string(),
        });
    }
    let desc = format!("JSONL manifest {}", path.display());
    Ok(Dataset::from_index(SourceKind::Jsonl, desc, samples, bad))
}
