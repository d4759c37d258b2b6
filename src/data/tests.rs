use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};

use super::*;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("smolcap-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TEST_PARQUET: &str = "datasets/coco_captions/data/test-00000-of-00001.parquet";

fn ids(groups: &[ImageGroup]) -> Vec<ImageId> {
    groups.iter().map(|g| g.id.clone()).collect()
}

fn nums(v: &[i64]) -> Vec<ImageId> {
    v.iter().map(|&n| ImageId::Num(n)).collect()
}

/// Decodes every item of `items`, returning (width, height) or the error text per item.
fn decode_all<T: AsRef<ImageRef>>(
    ds: &Dataset,
    items: &[T],
    chunk: usize,
) -> Vec<std::result::Result<(usize, usize), String>> {
    let mut out = Vec::new();
    for (k, item) in ds.images(items, DecodeLimits::default(), chunk).enumerate() {
        let (i, img) = item.unwrap();
        assert_eq!(i, k, "stream order");
        out.push(
            img.map(|im| (im.width(), im.height()))
                .map_err(|e| e.to_string()),
        );
    }
    out
}

#[test]
fn split_file_matching() {
    for (rel, split, want) in [
        ("data/test-00000-of-00001.parquet", "test", true),
        ("data/train-00000-of-00003.parquet", "test", false),
        ("test/0000.parquet", "test", true),
        ("default/test/0000.parquet", "test", true),
        ("default/train/0000.parquet", "test", false),
        ("test.parquet", "test", true),
        ("test_0.parquet", "test", true),
        ("test2.parquet", "test", true),
        ("testing.parquet", "test", false),
        ("validation-0.parquet", "val", false),
        ("data/test-00000.json", "test", false),
        ("data/test-00000.PARQUET", "test", true),
    ] {
        assert_eq!(file_in_split(rel, split), want, "{rel} {split}");
    }
    let found = splits_found(&[
        "data/test-00000-of-00001.parquet".into(),
        "data/train-00000-of-00002.parquet".into(),
        "default/validation/0000.parquet".into(),
    ]);
    assert_eq!(found, ["test", "train", "validation"]);
}

#[test]
fn shuffle_is_a_seeded_stable_permutation() {
    let mut a: Vec<u32> = (0..10).collect();
    shuffle(&mut a, 42);
    // Pinned (also computed by a 10-line Python port of SplitMix64 + multiply-shift
    // Fisher–Yates): the order must not change across platforms and versions.
    assert_eq!(a, [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    let mut b: Vec<u32> = (0..10).collect();
    shuffle(&mut b, 43);
    assert_ne!(a, b);
    let mut one = [7];
    shuffle(&mut one, 1);
    assert_eq!(one, [7]);
    shuffle::<u8>(&mut [], 1);
}

#[test]
fn parquet_dir_grouped_view() {
    let ds = Dataset::open(&DatasetSpec::new(
        fixture("datasets/coco_captions").to_string_lossy(),
        "test",
    ))
    .unwrap();
    assert_eq!(ds.kind(), SourceKind::Parquet);
    assert!(
        ds.description().contains("split test"),
        "{}",
        ds.description()
    );
    // The null caption (row 7) is reported while indexing.
    assert_eq!(ds.bad_rows().len(), 1, "{:?}", ds.bad_rows());
    assert!(ds.bad_rows()[0].location.ends_with("row 7"));
    assert!(ds.bad_rows()[0].reason.contains("caption is null"));
    assert_eq!(ds.samples().len(), 13);

    let groups = ds.grouped(&Select::default());
    assert_eq!(ids(&groups), nums(&[101, 102, 103, 105, 104]));
    assert_eq!(groups[0].references.len(), 3);
    // 102's third caption comes after 103's rows: grouping is not by contiguity.
    assert_eq!(
        groups[1].references,
        [
            "a small colourful square",
            "a tiny image of a square",
            "a square with bright colours"
        ]
    );
    assert_eq!(groups[1].rows, [3, 4, 8]);
    assert_eq!(groups[2].references.len(), 3);
    assert!(groups[2].references[1].contains("<b>bold</b>"));
    assert_eq!(groups[0].name, "gray_120x90.png");

    // Images are read across row groups (4 rows each), in order; the corrupt one is an error.
    let got = decode_all(&ds, &groups, 2);
    assert_eq!(got[0], Ok((120, 90)));
    assert_eq!(got[1], Ok((32, 32)));
    assert_eq!(got[2], Ok((90, 200)));
    assert!(got[3].is_err(), "{:?}", got[3]);
    assert_eq!(got[4], Ok((100, 80)));

    let two = ds.grouped(&Select {
        max_images: Some(2),
        ..Default::default()
    });
    assert_eq!(ids(&two), nums(&[101, 102]));
    let shuffled = ds.grouped(&Select {
        shuffle_seed: Some(3),
        ..Default::default()
    });
    let mut sorted = ids(&shuffled);
    sorted.sort();
    assert_eq!(sorted, nums(&[101, 102, 103, 104, 105]));
    assert_eq!(
        ids(&shuffled),
        ids(&ds.grouped(&Select {
            shuffle_seed: Some(3),
            ..Default::default()
        }))
    );
}

#[test]
fn parquet_row_view_shuffle_and_limits() {
    let ds = Dataset::open(&DatasetSpec::new(
        fixture(TEST_PARQUET).to_string_lossy(),
        "ignored-for-a-file",
    ))
    .unwrap();
    let all = ds.rows(&Select::default());
    assert_eq!(all.len(), 13);
    assert_eq!(all[0].row, 0);
    assert_eq!(all[7].row, 8, "row numbers count the bad row");
    let sel = Select {
        shuffle_seed: Some(7),
        ..Default::default()
    };
    let sh = ds.rows(&sel);
    assert_eq!(sh, ds.rows(&sel), "same seed, same order");
    assert_ne!(sh, all);
    let mut rows: Vec<usize> = sh.iter().map(|s| s.row).collect();
    rows.sort_unstable();
    assert_eq!(rows, all.iter().map(|s| s.row).collect::<Vec<_>>());

    let two = ds.rows(&Select {
        max_images: Some(2),
        ..Default::default()
    });
    assert_eq!(two.len(), 6, "3 captions of 101 + 3 of 102");
    assert!(two
        .iter()
        .all(|s| s.id == ImageId::Num(101) || s.id == ImageId::Num(102)));
    let lim = ds.rows(&Select {
        shuffle_seed: Some(7),
        max_images: Some(2),
        max_samples: Some(3),
    });
    // Shuffle, then keep the rows of the first two images seen, then the first three rows.
    let first_two: Vec<ImageId> = sh.iter().fold(Vec::new(), |mut v, s| {
        if v.len() < 2 && !v.contains(&s.id) {
            v.push(s.id.clone());
        }
        v
    });
    let want: Vec<Sample> = sh
        .iter()
        .filter(|s| first_two.contains(&s.id))
        .take(3)
        .cloned()
        .collect();
    assert_eq!(lim, want);

    // Samples stream their own row's image (each row of an image decodes to the same pixels).
    let got = decode_all(&ds, &all, 5);
    assert_eq!(got.len(), 13);
    assert_eq!(got.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn parquet_layouts_and_split_errors() {
    let src = fixture(TEST_PARQUET);
    for layout in [
        "test/0000.parquet",
        "default/test/0000.parquet",
        "test.parquet",
        "test-00000-of-00001.parquet",
    ] {
        let root = temp_dir("layout");
        let dst = root.join(layout);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
        std::fs::write(root.join("README.md"), "card").unwrap();
        let ds = Dataset::open(&DatasetSpec::new(root.to_string_lossy(), "test")).unwrap();
        assert_eq!(ds.grouped(&Select::default()).len(), 5, "{layout}");
        let e = Dataset::open(&DatasetSpec::new(root.to_string_lossy(), "train"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"train\"") && e.contains("test"),
            "{layout}: {e}"
        );
        std::fs::remove_dir_all(&root).ok();
    }
    let ds = Dataset::open(&DatasetSpec::new(
        fixture("datasets/coco_captions").to_string_lossy(),
        "train",
    ))
    .unwrap();
    assert_eq!(ds.samples().len(), 5);
    assert!(ds.bad_rows().is_empty());
}

#[test]
fn coco_annotation_json() {
    let ds = Dataset::open(&DatasetSpec {
        image_dir: Some(fixture("images")),
        ..DatasetSpec::new(
            fixture("datasets/coco_annotations.json").to_string_lossy(),
            "test",
        )
    })
    .unwrap();
    assert_eq!(ds.kind(), SourceKind::CocoJson);
    let groups = ds.grouped(&Select::default());
    assert_eq!(ids(&groups), nums(&[101, 102, 103, 104]));
    assert_eq!(groups[1].references.len(), 3);
    assert_eq!(
        decode_all(&ds, &groups, 3),
        [Ok((120, 90)), Ok((32, 32)), Ok((90, 200)), Ok((100, 80))]
    );
    // Without an image dir the images are looked for next to the file: a per-image error.
    let ds = Dataset::from_coco_json(
        &fixture("datasets/coco_annotations.json"),
        &fixture("datasets"),
    )
    .unwrap();
    let got = decode_all(&ds, &ds.grouped(&Select::default()), 4);
    assert!(got.iter().all(|r| r
        .as_ref()
        .is_err_and(|e| e.contains("gray_120x90.png") || e.contains(".png"))));
}

#[test]
fn karpathy_json_splits() {
    let json = fixture("datasets/dataset_coco.json");
    let open = |split: &str| {
        Dataset::open(&DatasetSpec {
            image_dir: Some(fixture("")),
            ..DatasetSpec::new(json.to_string_lossy(), split)
        })
    };
    let test = open("test").unwrap();
    assert_eq!(test.kind(), SourceKind::Karpathy);
    assert_eq!(ids(&test.grouped(&Select::default())), nums(&[101]));
    assert_eq!(
        ids(&open("validation").unwrap().grouped(&Select::default())),
        nums(&[102])
    );
    let train = open("train").unwrap();
    let g = train.grouped(&Select::default());
    assert_eq!(ids(&g), nums(&[103, 104]), "train includes restval");
    assert_eq!(g[0].references.len(), 3);
    assert_eq!(g[0].name, "images/portrait_90x200.png");
    assert_eq!(decode_all(&train, &g, 8), [Ok((90, 200)), Ok((100, 80))]);
    assert!(open("bogus").is_err());
    // A directory holding dataset_coco.json.
    let dir = temp_dir("karpathy");
    std::fs::copy(&json, dir.join("dataset_coco.json")).unwrap();
    let ds = Dataset::open(&DatasetSpec {
        image_dir: Some(fixture("")),
        ..DatasetSpec::new(dir.to_string_lossy(), "test")
    })
    .unwrap();
    assert_eq!(ds.kind(), SourceKind::Karpathy);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn jsonl_manifest_and_bad_lines() {
    let ds = Dataset::open(&DatasetSpec::new(
        fixture("datasets/manifest.jsonl").to_string_lossy(),
        "test",
    ))
    .unwrap();
    assert_eq!(ds.kind(), SourceKind::Jsonl);
    let g = ds.grouped(&Select::default());
    assert_eq!(g.len(), 4);
    assert_eq!(g[0].id, ImageId::Str("../images/gray_120x90.png".into()));
    assert_eq!(
        decode_all(&ds, &g, 2),
        [Ok((120, 90)), Ok((32, 32)), Ok((90, 200)), Ok((100, 80))]
    );

    let dir = temp_dir("jsonl");
    std::fs::copy(fixture("images/square_32x32.png"), dir.join("a.png")).unwrap();
    std::fs::write(dir.join("bad.png"), b"not a png").unwrap();
    let lines = [
        r#"{"image": "a.png", "caption": "one", "image_id": 5}"#,
        r#"{"image": "a.png", "caption": null}"#,
        "",
        r#"{"image": "a.png""#,
        r#"{"caption": "no image"}"#,
        r#"{"image": "missing.png", "caption": "gone"}"#,
        r#"{"image": "bad.png", "caption": "corrupt"}"#,
        r#"{"image": "a.png", "caption": "two", "image_id": 5}"#,
    ];
    std::fs::write(dir.join("train.jsonl"), lines.join("\n")).unwrap();
    // A directory with <split>.jsonl.
    let ds = Dataset::open(&DatasetSpec::new(dir.to_string_lossy(), "train")).unwrap();
    let bad: Vec<String> = ds.bad_rows().iter().map(ToString::to_string).collect();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        bad[0].contains("line 2") && bad[0].contains("caption"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("line 4") && bad[1].contains("JSON"),
        "{bad:?}"
    );
    assert!(
        bad[2].contains("line 5") && bad[2].contains("image"),
        "{bad:?}"
    );
    let g = ds.grouped(&Select::default());
    assert_eq!(g.len(), 3);
    assert_eq!(g[0].id, ImageId::Num(5));
    assert_eq!(g[0].references, ["one", "two"]);
    let got = decode_all(&ds, &g, 8);
    assert_eq!(got[0], Ok((32, 32)));
    assert!(
        got[1].as_ref().is_err_and(|e| e.contains("missing.png")),
        "{got:?}"
    );
    assert!(got[2].is_err());
    std::fs::remove_dir_all(&dir).ok();
}

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = ::parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_schema_errors_name_the_file_and_column() {
    let dir = temp_dir("schema");
    let not = dir.join("test.parquet");
    std::fs::write(&not, b"PAR1 but not really").unwrap();
    let e = Dataset::open(&DatasetSpec::new(not.to_string_lossy(), "test"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.parquet") && e.contains("parquet"), "{e}");

    let caption: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
    let image: ArrayRef = Arc::new(BinaryArray::from(vec![&b"x"[..], &b"y"[..]]));
    let batch =
        RecordBatch::try_from_iter([("caption", caption), ("image", image.clone())]).unwrap();
    let p = dir.join("int_caption.parquet");
    write_parquet(&p, &batch);
    let e = Dataset::open(&DatasetSpec::new(p.to_string_lossy(), "test"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("int_caption.parquet") && e.contains("\"caption\"") && e.contains("Int64"),
        "{e}"
    );

    let text: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    let batch = RecordBatch::try_from_iter([("text", text)]).unwrap();
    let p = dir.join("no_caption.parquet");
    write_parquet(&p, &batch);
    let e = Dataset::open(&DatasetSpec::new(p.to_string_lossy(), "test"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no \"caption\" column") && e.contains("text"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn parquet_null_bytes_fall_back_to_the_path_and_plain_binary_images() {
    let dir = temp_dir("nullbytes");
    std::fs::copy(fixture("images/tiny_20x15.png"), dir.join("tiny.png")).unwrap();
    let png = std::fs::read(fixture("images/square_32x32.png")).unwrap();
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let bytes: ArrayRef = Arc::new(BinaryArray::from(vec![
        None,
        Some(png.as_slice()),
        None,
        None,
    ]));
    let paths: ArrayRef = Arc::new(StringArray::from(vec![
        Some("tiny.png"),
        Some("square.png"),
        Some("absent.png"),
        None,
    ]));
    let image = StructArray::new(fields.clone(), vec![bytes, paths], None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(fields), true),
        Field::new("caption", DataType::Utf8, true),
        Field::new("image_id", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(image),
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            Arc::new(StringArray::from(vec![
                Some("x"),
                Some("y"),
                Some("z"),
                None,
            ])),
        ],
    )
    .unwrap();
    let p = dir.join("mixed.parquet");
    write_parquet(&p, &batch);
    let ds = Dataset::open(&DatasetSpec::new(p.to_string_lossy(), "train")).unwrap();
    assert_eq!(ds.bad_rows().len(), 1, "null image_id");
    assert!(ds.bad_rows()[0].reason.contains("image_id is null"));
    let g = ds.grouped(&Select::default());
    assert_eq!(
        ids(&g),
        [
            ImageId::Str("x".into()),
            ImageId::Str("y".into()),
            ImageId::Str("z".into())
        ]
    );
    let got = decode_all(&ds, &g, 4);
    assert_eq!(got[0], Ok((20, 15)), "null bytes, file next to the parquet");
    assert_eq!(got[1], Ok((32, 32)));
    assert!(
        got[2].as_ref().is_err_and(|e| e.contains("absent.png")),
        "{got:?}"
    );

    // A plain binary image column, no ids: each row is its own image.
    let caption: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    let image: ArrayRef = Arc::new(BinaryArray::from(vec![Some(png.as_slice()), None]));
    let batch = RecordBatch::try_from_iter([("image", image), ("caption", caption)]).unwrap();
    let p = dir.join("plain.parquet");
    write_parquet(&p, &batch);
    let ds = Dataset::open(&DatasetSpec::new(p.to_string_lossy(), "train")).unwrap();
    let g = ds.grouped(&Select::default());
    assert_eq!(g.len(), 2);
    let got = decode_all(&ds, &g, 1);
    assert_eq!(got[0], Ok((32, 32)));
    assert!(
        got[1].as_ref().is_err_and(|e| e.contains("null")),
        "{got:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_sources_are_clear_errors() {
    let e = Dataset::open(&DatasetSpec::new("./no/such/dir", "test"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/dir"), "{e}");
    let dir = temp_dir("empty");
    let e = Dataset::open(&DatasetSpec::new(dir.to_string_lossy(), "test"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a caption dataset"), "{e}");
    let txt = dir.join("x.txt");
    std::fs::write(&txt, "hi").unwrap();
    assert!(Dataset::open(&DatasetSpec::new(txt.to_string_lossy(), "test")).is_err());
    let j = dir.join("x.json");
    std::fs::write(&j, r#"{"images": [{"id": 1, "file_name": "a.png"}]}"#).unwrap();
    let e = Dataset::open(&DatasetSpec::new(j.to_string_lossy(), "test"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.json") && e.contains("annotations"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn parquet_codecs_pyarrow_and_polars_write_read_alike() {
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use ::parquet::basic::{Compression, GzipLevel, ZstdLevel};
    use ::parquet::file::properties::WriterProperties;
    let src = fixture(TEST_PARQUET);
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&src).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
    let want = Dataset::open(&DatasetSpec::new(src.to_string_lossy(), "test")).unwrap();
    let want_groups = want.grouped(&Select::default());
    let want_images = decode_all(&want, &want_groups, 8);
    let dir = temp_dir("codecs");
    for codec in [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::GZIP(GzipLevel::default()),
        Compression::ZSTD(ZstdLevel::default()),
        Compression::LZ4_RAW,
    ] {
        let p = dir.join(format!("{codec:?}.parquet").replace(['(', ')', ' ', '{', '}', ':'], ""));
        let props = WriterProperties::builder().set_compression(codec).build();
        let f = std::fs::File::create(&p).unwrap();
        let mut w =
            ::parquet::arrow::ArrowWriter::try_new(f, batches[0].schema(), Some(props)).unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let ds = Dataset::open(&DatasetSpec::new(p.to_string_lossy(), "test"))
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        let groups = ds.grouped(&Select::default());
        assert_eq!(ids(&groups), ids(&want_groups), "{codec:?}");
        for (g, w) in groups.iter().zip(&want_groups) {
            assert_eq!(g.references, w.references, "{codec:?}");
        }
        assert_eq!(decode_all(&ds, &groups, 8), want_images, "{codec:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
