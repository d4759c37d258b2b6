#!/usr/bin/env python3
"""Caption a dataset on a Ray cluster with smolcap, then score the union once.

Input: a parquet dataset in the ``jxie/coco_captions`` layout (a file, a directory or a glob of
``image`` struct<bytes, path> / ``caption`` / ``cocoid`` rows: one row per image-caption pair),
or a folder of images. Output: one predictions file in input order, ``.parquet`` or
``.jsonl``; for a parquet dataset also corpus metrics over all images (``--metrics``), computed
once over the union of every actor's captions, never averaged per actor.

    python examples/python/ray_caption.py --model HuggingFaceTB/SmolVLM-256M-Instruct \\
        --parquet coco_captions/data/test-00000-of-00001.parquet --output preds.jsonl \\
        --metrics metrics.json --actors 2 --cpus-per-actor 1

Each actor loads the model once (smolcap.ray.Captioner) and uses ``--cpus-per-actor`` compute
threads; on a multi-node cluster pass ``--address auto``.
"""

import argparse
import glob
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory or hub repo id")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--parquet", help="parquet file, directory or glob (jxie/coco_captions layout)")
    src.add_argument("--images", help="a folder of images (searched recursively)")
    ap.add_argument("--output", required=True, help="predictions file: .parquet or .jsonl")
    ap.add_argument("--metrics", help="write corpus metrics (parquet input) to this JSON file")
    ap.add_argument("--suite", default="seed", choices=["seed", "coco"])
    ap.add_argument("--max-images", type=int, default=0, help="first N unique images (0 = all)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    ap.add_argument("--ray-batch-size", type=int, default=16, help="rows per map_batches call")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    return ap.parse_args(argv)


def parquet_files(spec):
    p = Path(spec)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*.parquet"))
    return sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]


def run(args):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    import smolcap
    import smolcap.ray

    if not ray.is_initialized():
        ray.init(address=args.address, num_cpus=None if args.address else args.actors * args.cpus_per_actor,
                 runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(args.cpus_per_actor)}},
                 include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True

    if args.parquet:
        files = parquet_files(args.parquet)
        if not files:
            sys.exit(f"{args.parquet}: no parquet files")
        table = pa.concat_tables([pq.read_table(f) for f in files])
        ds = smolcap.ray.unique_images(ray.data.from_arrow(table))
        id_column = "cocoid"
    else:
        paths = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            sys.exit(f"{args.images}: no images")
        ds = ray.data.from_items([{"image": p, "name": os.path.relpath(p, args.images)} for p in paths])
        id_column = "name"
    if args.max_images:
        ds = ds.limit(args.max_images)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    if args.prompt:
        kwargs["prompt"] = args.prompt
    out = ds.map_batches(
        smolcap.ray.Captioner,
        fn_constructor_kwargs=dict(model=args.model, batch_size=args.batch_size, **kwargs),
        concurrency=args.actors,
        num_cpus=args.cpus_per_actor,
        batch_size=args.ray_batch_size,
    )
    rows = out.drop_columns(["image"]).take_all()

    preds = [{"image_id": np.asarray(r[id_column]).item() if hasattr(r[id_column], "item") else r[id_column],
              "caption": r["caption"], "error": r["caption_error"]}
             for r in rows]
    for p, r in zip(preds, rows):
        if "references" in r:
            p["references"] = [str(x) for x in r["references"]]
    dest = Path(args.output)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(preds), dest)
    else:
        with open(dest, "w") as f:
            for p in preds:
                f.write(json.dumps(p) + "\n")
    ok = [p for p in preds if p["caption"] is not None]
    failed = [p for p in preds if p["caption"] is None]
    print(f"captioned {len(ok)} images ({len(failed)} failed) with {args.actors} actors -> {dest}")
    for p in failed[:5]:
        print(f"  failed: {p['image_id']}: {p['error']}")
    result = {"predictions": preds}
    if args.parquet and ok:
        scores = smolcap.score([p["references"] for p in ok], [p["caption"] for p in ok], suite=args.suite)
        result["scores"] = scores
        print(", ".join(f"{k} {v:.4f}" for k, v in sorted(scores["corpus"].items())))
        if args.metrics:
            Path(args.metrics).write_text(json.dumps(
                {"suite": scores["suite"], "images": scores["images"], "corpus": scores["corpus"]}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run(parse_args())
