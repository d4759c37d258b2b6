//! Parquet caption files in the `jxie/coco_captions` schema, read with arrow: the index from the
//! caption / id / image-path columns, image bytes row group by row group on demand.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;

use super::{BadRow, ImageId, ImageRef, Sample};
use crate::error::{Error, Result};

/// Encoded images (or per-image errors) keyed by `(file, row)`.
pub(crate) type ImagesByRow = HashMap<(usize, usize), Result<Vec<u8>>>;

/// Rows per record batch while indexing.
const INDEX_BATCH: usize = 8192;

/// The opened parquet files of a dataset.
pub(crate) struct ParquetFiles {
    files: Vec<PFile>,
}

struct PFile {
    path: PathBuf,
    label: String,
    meta: ArrowReaderMetadata,
    /// First row of each row group, then the file's row count.
    rg_start: Vec<usize>,
    cols: Columns,
}

/// Leaf column indices (parquet schema order) of the columns we read.
struct Columns {
    caption: usize,
    /// The id column's leaf and name (`cocoid` or `image_id`).
    id: Option<(usize, String)>,
    /// `image.bytes`, or `image` when it is a plain binary column.
    image_bytes: usize,
    /// `image.path` when `image` is a struct with a path.
    image_path: Option<usize>,
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn is_int(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

impl ParquetFiles {
    /// Opens every file, checks its schema and indexes its rows.
    pub(crate) fn open(files: Vec<(PathBuf, String)>) -> Result<(Self, Vec<Sample>, Vec<BadRow>)> {
        let mut out = Vec::with_capacity(files.len());
        let mut samples = Vec::new();
        let mut bad = Vec::new();
        let mut base = 0usize;
        for (fi, (path, label)) in files.into_iter().enumerate() {
            let f = PFile::open(path, label)?;
            // Rows are counted from the metadata before any is indexed.
            let rows = f.rg_start.last().copied().unwrap_or(0);
            if base.saturating_add(rows) > super::MAX_ENTRIES {
                return Err(Error::Limit(format!(
                    "{}: the parquet files hold more than {} rows",
                    f.path.display(),
                    super::MAX_ENTRIES
                )));
            }
            let n = f.index(fi, base, &mut samples, &mut bad)?;
            base += n;
            out.push(f);
        }
        Ok((Self { files: out }, samples, bad))
    }

    /// The label (relative path) of file `i`.
    pub(crate) fn label(&self, i: usize) -> &str {
        self.files.get(i).map_or("?", |f| f.label.as_str())
    }

    /// Encoded bytes of the rows `wanted` (`(file, row)`), keyed by `(file, row)`.
    pub(crate) fn read_images(
        &self,
        wanted: &[(usize, usize)],
        max_bytes: u64,
    ) -> Result<ImagesByRow> {
        let mut by_group: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
        for &(fi, row) in wanted {
            let f = self
                .files
                .get(fi)
                .ok_or_else(|| Error::Internal(format!("parquet file index {fi} out of range")))?;
            let rg = f
                .row_group_of(row)
                .ok_or_else(|| Error::Internal(format!("{} has no row {row}", f.path.display())))?;
            by_group.entry((fi, rg)).or_default().push(row);
        }
        let mut keys: Vec<(usize, usize)> = by_group.keys().copied().collect();
        keys.sort_unstable();
        let mut out = HashMap::new();
        for (fi, rg) in keys {
            let mut rows = by_group.remove(&(fi, rg)).unwrap_or_default();
            rows.sort_unstable();
            rows.dedup();
            let f = &self.files[fi];
            for (row, v) in rows.iter().zip(f.read_rows(rg, &rows, max_bytes)?) {
                out.insert((fi, *row), v);
            }
        }
        Ok(out)
    }
}

impl PFile {
    fn open(path: PathBuf, label: String) -> Result<Self> {
        let file = crate::fsio::open_regular(&path)?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
            .map_err(|e| Error::format(&path, format!("not a readable parquet file: {e}")))?;
        let cols = Self::columns(&path, &meta)?;
        let mut rg_start = Vec::with_capacity(meta.metadata().num_row_groups() + 1);
        let mut n = 0usize;
        for rg in meta.metadata().row_groups() {
            rg_start.push(n);
            n += usize::try_from(rg.num_rows()).map_err(|_| {
                Error::format(&path, format!("row group with {} rows", rg.num_rows()))
            })?;
        }
        rg_start.push(n);
        Ok(Self {
            path,
            label,
            meta,
            rg_start,
            cols,
        })
    }

    /// Finds and type-checks the caption, id and image columns.
    fn columns(path: &Path, meta: &ArrowReaderMetadata) -> Result<Columns> {
        let schema = meta.schema();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let bad = |msg: String| Error::format(path, msg);
        let leaf = |parts: &[&str]| {
            meta.parquet_schema().columns().iter().position(|c| {
                c.path()
                    .parts()
                    .iter()
                    .map(String::as_str)
                    .eq(parts.iter().copied())
            })
        };
        let caption_field = schema.field_with_name("caption").map_err(|_| {
            bad(format!(
                "no \"caption\" column (columns: {})",
                names.join(", ")
            ))
        })?;
        if !is_string(caption_field.data_type()) {
            return Err(bad(format!(
                "column \"caption\" has type {}, expected a string",
                caption_field.data_type()
            )));
        }
        let caption = leaf(&["caption"])
            .ok_or_else(|| bad("column \"caption\" has no parquet leaf".into()))?;
        let mut id = None;
        for name in ["cocoid", "image_id"] {
            if let Ok(f) = schema.field_with_name(name) {
                if !is_int(f.data_type()) && !is_string(f.data_type()) {
                    return Err(bad(format!(
                        "column \"{name}\" has type {}, expected an integer or a string",
                        f.data_type()
                    )));
                }
                let l = leaf(&[name])
                    .ok_or_else(|| bad(format!("column \"{name}\" has no parquet leaf")))?;
                id = Some((l, name.to_string()));
                break;
            }
        }
        let image_field = schema.field_with_name("image").map_err(|_| {
            bad(format!(
                "no \"image\" column (columns: {})",
                names.join(", ")
            ))
        })?;
        let (image_bytes, image_path) = match image_field.data_type() {
            t if is_binary(t) => (
                leaf(&["image"]).ok_or_else(|| bad("column \"image\" has no leaf".into()))?,
                None,
            ),
            DataType::Struct(fields) => {
                let bytes = fields
                    .iter()
                    .find(|f| f.name() == "bytes")
                    .ok_or_else(|| bad("column \"image\" is a struct without \"bytes\"".into()))?;
                if !is_binary(bytes.data_type()) {
                    return Err(bad(format!(
                        "column \"image.bytes\" has type {}, expected binary",
                        bytes.data_type()
                    )));
                }
                let path_ok = fields
                    .iter()
                    .any(|f| f.name() == "path" && is_string(f.data_type()));
                (
                    leaf(&["image", "bytes"])
                        .ok_or_else(|| bad("column \"image.bytes\" has no leaf".into()))?,
                    if path_ok {
                        leaf(&["image", "path"])
                    } else {
                        None
                    },
                )
            }
            other => {
                return Err(bad(format!(
                    "column \"image\" has type {other}, expected struct<bytes: binary, path: string> or binary"
                )))
            }
        };
        Ok(Columns {
            caption,
            id,
            image_bytes,
            image_path,
        })
    }

    fn row_group_of(&self, row: usize) -> Option<usize> {
        if row >= *self.rg_start.last()? {
            return None;
        }
        // rg_start is sorted; the group is the last start <= row.
        Some(self.rg_start.partition_point(|&s| s <= row) - 1)
    }

    fn builder(&self) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        let file = crate::fsio::open_regular(&self.path)?;
        Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(
            file,
            self.meta.clone(),
        ))
    }

    fn read_err(&self, e: impl std::fmt::Display) -> Error {
        let msg = e.to_string();
        let hint = if msg.contains("Disabled feature") {
            " (smolcap reads uncompressed, snappy, gzip, zstd and lz4 parquet; not brotli or lzo)"
        } else {
            ""
        };
        Error::format(&self.path, format!("reading parquet data: {msg}{hint}"))
    }

    /// Adds the file's good rows to `samples` and its bad ones to `bad`; returns its row count.
    fn index(
        &self,
        fi: usize,
        base: usize,
        samples: &mut Vec<Sample>,
        bad: &mut Vec<BadRow>,
    ) -> Result<usize> {
        let mut leaves = vec![self.cols.caption];
        leaves.extend(self.cols.id.as_ref().map(|(l, _)| *l));
        // The path leaf also carries the image struct's nulls; a plain binary image column is
        // not read here (its nulls show when the image is loaded).
        leaves.extend(self.cols.image_path);
        let mask = ProjectionMask::leaves(self.meta.parquet_schema(), leaves);
        let reader = self
            .builder()?
            .with_projection(mask)
            .with_batch_size(INDEX_BATCH)
            .build()
            .map_err(|e| self.read_err(e))?;
        let mut row = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| self.read_err(e))?;
            self.index_batch(&batch, fi, base, &mut row, samples, bad)?;
        }
        Ok(row)
    }

    fn index_batch(
        &self,
        batch: &RecordBatch,
        fi: usize,
        base: usize,
        row: &mut usize,
        samples: &mut Vec<Sample>,
        bad: &mut Vec<BadRow>,
    ) -> Result<()> {
        let missing = |c: &str| self.read_err(format!("column {c:?} missing from the batch"));
        let caption = batch
            .column_by_name("caption")
            .ok_or_else(|| missing("caption"))?;
        let id = match &self.cols.id {
            Some((_, name)) => Some((
                name.as_str(),
                batch.column_by_name(name).ok_or_else(|| missing(name))?,
            )),
            None => None,
        };
        let image: Option<&StructArray> = match self.cols.image_path {
            Some(_) => Some(
                batch
                    .column_by_name("image")
                    .and_then(|c| c.as_struct_opt())
                    .ok_or_else(|| missing("image"))?,
            ),
            None => None,
        };
        let image_path = image.and_then(|s| s.column_by_name("path"));
        for i in 0..batch.num_rows() {
            let r = *row;
            *row += 1;
            let location = format!("{} row {r}", self.label);
            let reject = |reason: String| BadRow {
                location: location.clone(),
                reason,
            };
            if image.is_some_and(|s| s.is_null(i)) {
                bad.push(reject("image is null".into()));
                continue;
            }
            let Some(text) = str_at(caption.as_ref(), i) else {
                bad.push(reject("caption is null".into()));
                continue;
            };
            let path = image_path
                .and_then(|p| str_at(p.as_ref(), i))
                .filter(|p| !p.is_empty());
            let key = match id {
                Some((name, col)) => match id_at(col.as_ref(), i) {
                    Some(k) => k,
                    None => {
                        bad.push(reject(format!("{name} is null")));
                        continue;
                    }
                },
                None => match path {
                    Some(p) => ImageId::Str(p.to_string()),
                    None => ImageId::Str(format!("{}#{r}", self.label)),
                },
            };
            samples.push(Sample {
                row: base + r,
                id: key,
                caption: text.to_string(),
                image: ImageRef::Parquet { file: fi, row: r },
                name: path.map_or_else(|| location.clone(), str::to_string),
            });
        }
        Ok(())
    }

    /// The encoded images of `rows` (sorted, distinct, all in row group `rg`).
    fn read_rows(&self, rg: usize, rows: &[usize], max_bytes: u64) -> Result<Vec<Result<Vec<u8>>>> {
        let start = self.rg_start[rg];
        let total = self.rg_start[rg + 1] - start;
        let ranges = rows.iter().map(|&r| (r - start)..(r - start + 1));
        let selection = RowSelection::from_consecutive_ranges(ranges, total);
        let mut leaves = vec![self.cols.image_bytes];
        leaves.extend(self.cols.image_path);
        let mask = ProjectionMask::leaves(self.meta.parquet_schema(), leaves);
        let reader = self
            .builder()?
            .with_row_groups(vec![rg])
            .with_projection(mask)
            .with_row_selection(selection)
            .with_batch_size(rows.len().max(1))
            .build()
            .map_err(|e| self.read_err(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for batch in reader {
            let batch = batch.map_err(|e| self.read_err(e))?;
            let col = batch
                .column_by_name("image")
                .ok_or_else(|| self.read_err("column \"image\" missing from the batch"))?;
            let (bytes, path, strukt) = match col.as_struct_opt() {
                Some(s) => (
                    s.column_by_name("bytes")
                        .ok_or_else(|| self.read_err("image.bytes missing from the batch"))?
                        .as_ref(),
                    s.column_by_name("path").map(|p| p.as_ref()),
                    Some(s),
                ),
                None => (col.as_ref(), None, None),
            };
            for i in 0..batch.num_rows() {
                let row = rows.get(out.len()).copied().unwrap_or(0);
                let v = if strukt.is_some_and(|s| s.is_null(i)) {
                    Err(Error::Image("image is null".into()))
                } else if let Some(b) = bytes_at(bytes, i) {
                    if b.len() as u64 > max_bytes {
                        Err(Error::Limit(format!(
                            "image of {} bytes, more than the limit of {max_bytes}",
                            b.len()
                        )))
                    } else {
                        Ok(b.to_vec())
                    }
                } else {
                    self.image_from_path(path.and_then(|p| str_at(p, i)), row, max_bytes)
                };
                out.push(v);
            }
        }
        if out.len() != rows.len() {
            return Err(self.read_err(format!(
                "row group {rg}: asked for {} rows, got {}",
                rows.len(),
                out.len()
            )));
        }
        Ok(out)
    }

    /// An image whose bytes are null but whose `path` names a file (absolute or relative to the
    /// parquet file), as `datasets` stores images it did not embed.
    fn image_from_path(&self, path: Option<&str>, row: usize, max_bytes: u64) -> Result<Vec<u8>> {
        let Some(p) = path.filter(|p| !p.is_empty()) else {
            return Err(Error::Image(format!(
                "{} row {row}: image bytes are null and there is no path",
                self.label
            )));
        };
        let p = Path::new(p);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            super::parent_dir(&self.path).join(p)
        };
        if !full.is_file() {
            return Err(Error::Image(format!(
                "{} row {row}: image bytes are null and {} is not a file",
                self.label,
                full.display()
            )));
        }
        super::read_image_file(&full, max_bytes)
    }
}

fn str_at(a: &dyn Array, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        return Some(s.value(i));
    }
    if let Some(s) = a.as_string_opt::<i64>() {
        return Some(s.value(i));
    }
    a.as_string_view_opt().map(|s| s.value(i))
}

fn bytes_at(a: &dyn Array, i: usize) -> Option<&[u8]> {
    if a.is_null(i) {
        return None;
    }
    if let Some(s) = a.as_binary_opt::<i32>() {
        return Some(s.value(i));
    }
    if let Some(s) = a.as_binary_opt::<i64>() {
        return Some(s.value(i));
    }
    a.as_binary_view_opt().map(|s| s.value(i))
}

fn id_at(a: &dyn Array, i: usize) -> Option<ImageId> {
    if a.is_null(i) {
        return None;
    }
    macro_rules! int {
        ($($t:ty),*) => {
            $(if let Some(p) = a.as_primitive_opt::<$t>() {
                let v = p.value(i);
                return Some(i64::try_from(v).map_or_else(|_| ImageId::Str(v.to_string()), ImageId::Num));
            })*
        };
    }
    int!(Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type);
    str_at(a, i).map(|s| ImageId::Str(s.to_string()))
}
