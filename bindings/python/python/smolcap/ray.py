"""Captioning on Ray Data: a callable class for ``ray.data.Dataset.map_batches`` that loads the
model once per actor.

    import ray, smolcap.ray
    ds = ray.data.read_parquet("coco_captions/data/test-*.parquet")
    ds = smolcap.ray.unique_images(ds)            # one row per image (optional)
    out = ds.map_batches(smolcap.ray.Captioner, fn_constructor_kwargs={"model": "..."},
                         concurrency=2, batch_size=8, num_cpus=1)

Each actor captions its batches with the Rust pipeline (the GIL is released while it runs).
Give each actor ``num_cpus`` cores and set ``RAYON_NUM_THREADS`` to the same number in its
environment (``runtime_env={"env_vars": {...}}``) so the actors do not oversubscribe the machine.

Images may be a ``jxie/coco_captions``-style struct column (``{"bytes": ..., "path": ...}``),
encoded bytes, file paths or HxWxC uint8 arrays. Importing this module does not import Ray.
"""

from typing import Any, Dict, Optional

import numpy as np

from ._smolcap import Model, SmolcapError

__all__ = ["Captioner", "image_of", "unique_images"]


def image_of(value: Any) -> Any:
    """One cell of an image column as something ``Model.caption`` takes."""
    if isinstance(value, dict):
        b = value.get("bytes")
        if b is not None:
            return bytes(b)
        p = value.get("path")
        if p:
            return str(p)
        raise ValueError("image struct has neither bytes nor path")
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise ValueError("unsupported image cell (object array)")
    if isinstance(value, np.bytes_):
        return bytes(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


class Captioner:
    """``map_batches`` callable: adds a caption column to each batch.

    model: model directory or hub id; image_column / output_column: column names;
    batch_size: images per forward pass (independent of Ray's batch size; the captions do not
    depend on it); load options (device, dtype) go in ``load``, every other keyword is passed
    to ``Model.caption`` (prompt, max_new_tokens, num_beams, adapters, ...). Images that fail
    get a None caption and the error's text in ``<output_column>_error``.
    """

    def __init__(self, model: str, image_column: str = "image", output_column: str = "caption",
                 batch_size: int = 4, load: Optional[Dict[str, Any]] = None, **caption_kwargs: Any):
        self.model = Model.load(model, **(load or {}))
        self.image_column = image_column
        self.output_column = output_column
        self.batch_size = batch_size
        self.kwargs = caption_kwargs

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        images = [image_of(v) for v in batch[self.image_column]]
        try:
            texts = [c.text.strip() for c in
                     self.model.caption(images, batch_size=self.batch_size, **self.kwargs)]
            errors = [None] * len(texts)
        except SmolcapError:
            # One bad image (corrupt, too large) must not cost the batch: caption one by one
            # (the same captions: they do not depend on batching) and report the failures.
            texts, errors = [], []
            for img in images:
                try:
                    texts.append(self.model.caption(img, **self.kwargs).text.strip())
                    errors.append(None)
                except SmolcapError as e:
                    texts.append(None)
                    errors.append(f"{type(e).__name__}: {e}")
        out = dict(batch)
        out[self.output_column] = np.array(texts, dtype=object)
        out[self.output_column + "_error"] = np.array(errors, dtype=object)
        return out


def unique_images(ds: Any, id_column: str = "cocoid", caption_column: str = "caption",
                  references_column: str = "references") -> Any:
    """One row per image of a ``jxie/coco_captions``-layout dataset (rows are image-caption
    pairs), with all of the image's captions in ``references_column``, in first-seen order (as
    ``smolcap eval`` groups them). Rows without a caption are left out of the references."""
    import pyarrow as pa

    table = pa.concat_tables(ray_tables(ds))
    ids = table.column(id_column).to_pylist()
    caps = table.column(caption_column).to_pylist()
    first, refs = {}, {}
    for row, (i, c) in enumerate(zip(ids, caps)):
        if i not in first:
            first[i] = row
            refs[i] = []
        if c is not None:
            refs[i].append(c)
    rows = list(first.values())
    out = table.take(pa.array(rows)).drop_columns([caption_column])
    out = out.append_column(references_column, pa.array([refs[ids[r]] for r in rows]))
    import ray.data

    return ray.data.from_arrow(out)


def ray_tables(ds: Any):
    """The blocks of a Ray dataset as Arrow tables, in order."""
    import ray

    return [ray.get(ref) for ref in ds.to_arrow_refs()]
