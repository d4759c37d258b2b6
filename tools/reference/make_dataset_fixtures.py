#!/usr/bin/env python3
"""Write the tiny caption-dataset fixtures under tests/fixtures/datasets/.

Run from the repository root (needs pyarrow; `pip install pyarrow` into the venv):

    /work/venv/bin/python tools/reference/make_dataset_fixtures.py

Deterministic: two runs give byte-identical files. It writes

  coco_captions/data/test-00000-of-00001.parquet   the `jxie/coco_captions` schema (HF layout):
  coco_captions/data/train-00000-of-00001.parquet  image struct<bytes: binary, path: string>,
                                                   caption string, cocoid int64; one caption a row
  coco_annotations.json     COCO captions annotation format ({"images", "annotations"}), images
                            relative to tests/fixtures/images
  dataset_coco.json         Karpathy format (images[].filepath/filename/split/cocoid/sentences),
                            image root tests/fixtures
  manifest.jsonl            {"image", "caption"} lines, image paths relative to the manifest

The test split has four good images in first-seen order 101, 102, 103, 104 (the captions of 102
are not contiguous: one comes after 103's), one row whose image bytes are not an image (cocoid
105), one row with a null caption, a reference with HTML special characters, and row groups of
4 rows so images are read across row-group boundaries. One reference of 104 shares words with
the tiny model's greedy caption so that the end-to-end test's scores are not all zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests/fixtures/images"
OUT = ROOT / "tests/fixtures/datasets"

# (cocoid, image file or None for corrupt bytes, caption or None for a null caption)
TEST_ROWS = [
    (101, "gray_120x90.png", "a gray square with soft shading"),
    (101, "gray_120x90.png", "a grey gradient image"),
    (101, "gray_120x90.png", "a dark square on a light background"),
    (102, "square_32x32.png", "a small colourful square"),
    (102, "square_32x32.png", "a tiny image of a square"),
    (103, "portrait_90x200.png", "a tall narrow picture"),
    (103, "portrait_90x200.png", 'a <b>bold</b> "quoted" & \'single\' caption'),
    (103, "portrait_90x200.png", None),
    (102, "square_32x32.png", "a square with bright colours"),
    (105, None, "this row's image bytes are corrupt"),
    (104, "rgba_100x80.png", "a transparent picture with a shape"),
    (104, "rgba_100x80.png", "an image with an alpha channel"),
    (103, "portrait_90x200.png", "a vertical image of stripes"),
    # Shares words with the tiny model's greedy caption of this image, so scores are not all 0.
    (104, "rgba_100x80.png", "a person looks at the skate"),
]

TRAIN_ROWS = [
    (201, "tiny_20x15.png", "a very small picture"),
    (201, "tiny_20x15.png", "a tiny image"),
    (202, "pano_400x60.png", "a wide panorama"),
    (202, "pano_400x60.png", "a long thin strip of colour"),
    (203, "square_32x32.png", "a small square"),
]

HF_METADATA = {
    "info": {
        "features": {
            "image": {"_type": "Image"},
            "caption": {"dtype": "string", "_type": "Value"},
            "cocoid": {"dtype": "int64", "_type": "Value"},
        }
    }
}

SCHEMA = pa.schema(
    [
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("caption", pa.string()),
        pa.field("cocoid", pa.int64()),
    ],
    metadata={b"huggingface": json.dumps(HF_METADATA).encode()},
)


def write_parquet(rows, path: Path, row_group_size: int) -> None:
    images, captions, ids = [], [], []
    for cocoid, name, caption in rows:
        if name is None:
            images.append({"bytes": b"this is not an image", "path": f"{cocoid}.jpg"})
        else:
            images.append({"bytes": (IMAGES / name).read_bytes(), "path": name})
        captions.append(caption)
        ids.append(cocoid)
    table = pa.Table.from_pydict({"image": images, "caption": captions, "cocoid": ids}, schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Snappy is what `datasets` (pyarrow's default) writes.
    pq.write_table(table, path, row_group_size=row_group_size, compression="snappy")


def main() -> None:
    write_parquet(TEST_ROWS, OUT / "coco_captions/data/test-00000-of-00001.parquet", 4)
    write_parquet(TRAIN_ROWS, OUT / "coco_captions/data/train-00000-of-00001.parquet", 3)

    good = [r for r in TEST_ROWS if r[1] is not None and r[2] is not None]
    first = {}
    for cocoid, name, _ in good:
        first.setdefault(cocoid, name)
    coco = {
        "info": {"description": "smolcap test fixture"},
        "images": [{"id": i, "file_name": n} for i, n in first.items()],
        "annotations": [
            {"id": k, "image_id": cocoid, "caption": cap} for k, (cocoid, _, cap) in enumerate(good)
        ],
    }
    (OUT / "coco_annotations.json").write_text(json.dumps(coco, indent=1) + "\n")

    splits = {101: "test", 102: "val", 103: "restval", 104: "train"}
    karpathy = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "images",
                "filename": n,
                "imgid": k,
                "split": splits[i],
                "cocoid": i,
                "sentids": [],
                "sentences": [
                    {"raw": cap, "tokens": cap.lower().split(), "imgid": k}
                    for cocoid, _, cap in good
                    if cocoid == i
                ],
            }
            for k, (i, n) in enumerate(first.items())
        ],
    }
    (OUT / "dataset_coco.json").write_text(json.dumps(karpathy, indent=1) + "\n")

    lines = [json.dumps({"image": f"../images/{n}", "caption": cap}) for _, n, cap in good]
    (OUT / "manifest.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
