#!/usr/bin/env python3
"""Reference data for smolcap's image processor (src/processor/image.rs, resample.rs).

Run from the repository root:  /work/venv/bin/python tools/reference/image_cases.py

Writes tests/fixtures/imgproc/: deterministic input images (PNG variants, JPEG, GIF, WebP, BMP,
TIFF) and cases.json with, per case, digests of the exact u8 RGB tiles (HWC) the reference
produces before rescaling and of the float32 pixel_values, plus raw `Image.resize` digests for
every filter and mode. The processor class is named explicitly (`Idefics3ImageProcessorPil`;
`Idefics3ImageProcessor` is the torchvision one in transformers 5), so torchvision being installed
or not does not matter. The digest is `wsum64` (below): cheap in an unoptimised Rust test build,
certain to catch any single changed byte, and 2^-64-unlikely to miss any other difference.
Needs transformers 5.x (PIL backend) and Pillow 13 (its resize pass order differs from 12's).
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image, ImageOps
from transformers.image_utils import SizeDict
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

OUT = Path("tests/fixtures/imgproc")
IMG = OUT / "inputs"


def wsum64(b: bytes) -> str:
    """sum_i word_i * (splitmix64(i) | 1) mod 2^64 over little-endian u64 words (zero-padded),
    xor the byte length; as 16 hex digits. Mirrored by `wsum64` in src/processor/image.rs."""
    w = np.frombuffer(b + b"\0" * ((-len(b)) % 8), "<u8")
    z = np.arange(len(w), dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    h = np.sum(w * (z | np.uint64(1)), dtype=np.uint64) ^ np.uint64(len(b))
    return f"{int(h):016x}"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def synth_rgb(w: int, h: int, seed: int, noise: float = 2.0) -> np.ndarray:
    """Smooth colour fields, hard-edged shapes, a stripe band and a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / max(w - 1, 1), yy / max(h - 1, 1)
    r = 40 + 180 * u + 20 * np.sin(6.0 * v + seed)
    g = 30 + 150 * v + 40 * np.cos(5.0 * u * v + seed)
    b = 200 - 120 * u * v + 30 * np.sin(9.0 * (u + v))
    img = np.stack([r, g, b], -1)
    for _ in range(6):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = rng.uniform(0.05, 0.25) * min(w, h) + 1
        col = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < rad**2
        else:
            m = (np.abs(xx - cx) < rad) & (np.abs(yy - cy) < 0.6 * rad)
        img[m] = col
    band = (yy > 0.7 * h) & (yy < 0.8 * h)
    img[band & ((xx.astype(int) // 2) % 2 == 0)] = [250, 250, 250]
    img[band & ((xx.astype(int) // 2) % 2 == 1)] = [3, 3, 3]
    img += rng.normal(0, noise, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_bytes(arr, color_type, bit_depth, palette=None, trns=None) -> bytes:
    """A minimal PNG writer (PIL cannot write 16-bit colour or 2/4-bit gray)."""
    h, w = arr.shape[:2]
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    a = np.asarray(arr).reshape(h, w * ch).astype(np.uint32)
    raw = bytearray()
    for row in a:
        raw.append(0)
        if bit_depth == 16:
            raw += row.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw += row.astype(np.uint8).tobytes()
        else:
            per = 8 // bit_depth
            vals = list(row) + [0] * ((-len(row)) % per)
            for i in range(0, len(vals), per):
                raw.append(sum(int(vals[i + j]) << (8 - bit_depth * (j + 1)) for j in range(per)))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).ravel()))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def make_inputs() -> list[str]:
    IMG.mkdir(parents=True, exist_ok=True)
    names = []

    def save(name, im, **kw):
        im.save(IMG / name, **kw)
        names.append(name)

    def save_bytes(name, b):
        (IMG / name).write_bytes(b)
        names.append(name)

    rng = np.random.default_rng(1234)
    photo = synth_rgb(640, 480, 1)
    save("photo_640x480.png", Image.fromarray(photo, "RGB"), optimize=True)
    save("photo_640x480.jpg", Image.fromarray(photo, "RGB"), quality=90)
    save("photo_160x120.jpg", Image.fromarray(synth_rgb(160, 120, 11, noise=4), "RGB"), quality=85)
    save("portrait_90x200.png", Image.fromarray(synth_rgb(90, 200, 4), "RGB"), optimize=True)
    save("rgb_1x1.png", Image.fromarray(np.array([[[200, 30, 90]]], np.uint8), "RGB"))
    save("rgb_3x700.png", Image.fromarray(synth_rgb(3, 700, 5), "RGB"))
    save("rgb_701x5.png", Image.fromarray(synth_rgb(701, 5, 6), "RGB"))
    g = synth_rgb(333, 250, 7).astype(np.float64)
    gray = np.clip(np.rint(0.299 * g[..., 0] + 0.587 * g[..., 1] + 0.114 * g[..., 2]), 0, 255).astype(np.uint8)
    save("gray_333x250.png", Image.fromarray(gray, "L"), optimize=True)
    # LA: varied alpha including 0 and 255
    la_l = synth_rgb(120, 90, 8)[..., 1]
    yy, xx = np.mgrid[0:90, 0:120]
    la_a = np.clip(xx * 255.0 / 119.0 + 30 * np.sin(yy / 5.0), 0, 255).astype(np.uint8)
    la_a[:, :8] = 0
    la_a[:, -8:] = 255
    save("la_120x90.png", Image.fromarray(np.stack([la_l, la_a], -1), "LA"))
    # RGBA: every (value, alpha) pair
    yy, xx = np.mgrid[0:256, 0:256]
    rgba = np.stack([xx, 255 - xx, (7 * xx + yy) % 256, yy], -1).astype(np.uint8)
    save("rgba_256x256.png", Image.fromarray(rgba, "RGBA"))
    # RGBA photo-like, smaller
    rgb = synth_rgb(100, 80, 9)
    yy, xx = np.mgrid[0:80, 0:100]
    alpha = np.clip((xx * 255.0 / 99.0) + 40 * np.sin(yy / 7.0), 0, 255).astype(np.uint8)
    alpha[:, :10] = 0
    alpha[30:40, 40:60] = 0
    save("rgba_100x80.png", Image.fromarray(np.concatenate([rgb, alpha[..., None]], -1), "RGBA"))
    # Palette, no transparency (PIL quantize -> mode P)
    save("pal_200x150.png", Image.fromarray(synth_rgb(200, 150, 10), "RGB").quantize(colors=64, dither=0))
    # Palette with a tRNS chunk (some entries transparent, some partial)
    pal = rng.integers(0, 256, size=(16, 3))
    idx = (np.add.outer(np.arange(70) // 5, np.arange(90) // 6) % 16).astype(np.uint8)
    trns = bytes([0, 255, 128, 40, 255, 255, 200, 10] + [255] * 8)
    save_bytes("pal_trns_90x70.png", png_bytes(idx, 3, 8, palette=pal, trns=trns))
    # 4-bit palette
    save_bytes("pal4_33x17.png", png_bytes(idx[:17, :33], 3, 4, palette=pal))
    # Low-bit and 16-bit grayscale, 16-bit colour
    save_bytes("gray1_37x11.png", png_bytes(rng.integers(0, 2, (11, 37)), 0, 1))
    save_bytes("gray2_37x11.png", png_bytes(rng.integers(0, 4, (11, 37)), 0, 2))
    save_bytes("gray4_37x11.png", png_bytes(rng.integers(0, 16, (11, 37)), 0, 4))
    g16 = np.clip(rng.normal(200, 80, (30, 40)), 0, 65535).astype(np.uint16)  # straddles 255
    save_bytes("gray16_40x30.png", png_bytes(g16, 0, 16))
    rgb16 = synth_rgb(64, 48, 12).astype(np.uint32) * 257 + rng.integers(0, 257, (48, 64, 3))
    save_bytes("rgb16_64x48.png", png_bytes(rgb16, 2, 16))
    rgba16 = np.concatenate([rgb16[:40, :50], (np.mgrid[0:40, 0:50][1] * 1337 % 65536)[..., None]], -1)
    save_bytes("rgba16_50x40.png", png_bytes(rgba16, 6, 16))
    la16 = np.stack([rgb16[:20, :30, 0], (np.mgrid[0:20, 0:30][1] * 2222) % 65536], -1)
    save_bytes("la16_30x20.png", png_bytes(la16, 4, 16))
    # tRNS colour keys on gray and RGB
    gk = (np.add.outer(np.arange(25), np.arange(35)) * 9 % 256).astype(np.uint8)
    save_bytes("gray_trns_35x25.png", png_bytes(gk, 0, 8, trns=struct.pack(">H", 90)))
    rk = synth_rgb(35, 25, 13, noise=0)
    rk[5:15, 5:20] = [10, 20, 30]
    save_bytes("rgb_trns_35x25.png", png_bytes(rk, 2, 8, trns=struct.pack(">HHH", 10, 20, 30)))
    # Other containers
    gif = Image.fromarray(synth_rgb(50, 40, 14), "RGB").quantize(colors=32, dither=0)
    gif.info["transparency"] = 3
    save("anim_50x40.gif", gif, transparency=3)
    save("lossless_48x40.webp", Image.fromarray(synth_rgb(48, 40, 15), "RGB"), lossless=True)
    save("rgba_lossless_48x40.webp", Image.fromarray(np.concatenate(
        [synth_rgb(48, 40, 16), (np.mgrid[0:40, 0:48][1] * 5).astype(np.uint8)[..., None]], -1), "RGBA"), lossless=True)
    save("rgb_31x17.bmp", Image.fromarray(synth_rgb(31, 17, 17), "RGB"))
    save("rgb_33x21.tiff", Image.fromarray(synth_rgb(33, 21, 18), "RGB"))
    # EXIF orientation 6 (rotate 90 cw for display) on a PNG (eXIf chunk) and a JPEG
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif6_40x30.png", Image.fromarray(synth_rgb(40, 30, 19), "RGB"), exif=exif)
    save("exif6_64x48.jpg", Image.fromarray(synth_rgb(64, 48, 20), "RGB"), exif=exif, quality=95)
    # Not an input for the reference: a valid PNG header claiming 100000 x 100000 px and no data,
    # which the decoder must refuse from the header alone.
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    (OUT / "huge_header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
                                          + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
                                          + png_bytes(np.zeros((1, 1), np.uint8), 0, 8)[33:])
    return names


# ---------------------------------------------------------------------------------------------
# Reference computations
# ---------------------------------------------------------------------------------------------
def load(name: str, orient: bool = True) -> Image.Image:
    im = Image.open(IMG / name)
    im.load()
    return ImageOps.exif_transpose(im) if orient else im


def decoded_rgb(proc, im) -> np.ndarray:
    """HWC u8 RGB exactly as process_image + convert_to_rgb produce it."""
    chw = proc.process_image(im, do_convert_rgb=True)
    assert chw.dtype == np.uint8 and chw.shape[0] == 3
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def run_processor(name: str, cfg: dict) -> dict:
    kwargs = dict(
        do_resize=cfg.get("do_resize", True),
        size={"longest_edge": cfg["longest_edge"]},
        max_image_size={"longest_edge": cfg["max_image_size"]},
        resample=cfg["resample"],
        do_image_splitting=cfg["split"],
        do_rescale=cfg.get("do_rescale", True),
        rescale_factor=cfg.get("rescale_factor", 1 / 255),
        do_normalize=cfg.get("do_normalize", True),
        image_mean=cfg.get("image_mean", [0.5, 0.5, 0.5]),
        image_std=cfg.get("image_std", [0.5, 0.5, 0.5]),
        do_convert_rgb=True,
        do_pad=True,
    )
    proc = Idefics3ImageProcessorPil(**kwargs)
    assert type(proc).__name__ == "Idefics3ImageProcessorPil" and proc.backend == "pil"
    im = load(name)
    # step by step, as Idefics3ImageProcessorPil._preprocess does, keeping the u8 tiles
    R = kwargs["resample"]
    M = kwargs["max_image_size"]["longest_edge"]
    x = proc.process_image(im, do_convert_rgb=True)
    if kwargs["do_resize"]:
        x = proc.resize(x, SizeDict(longest_edge=cfg["longest_edge"]), resample=R)
    if cfg["split"]:
        x = proc.resize_for_vision_encoder(x, M, resample=R)
        frames, rows, cols = proc.split_images(x, max_image_size=kwargs["max_image_size"], resample=R)
    else:
        frames = [proc.resize(x, SizeDict(height=M, width=M), resample=R)]
        rows = cols = 0
    for f in frames:
        assert f.dtype == np.uint8, f.dtype
    # the real call, compared with the step-by-step result
    enc = proc(images=[[im]], return_row_col_info=True, return_tensors="np")
    pv = enc["pixel_values"][0]
    assert enc["rows"] == [[rows]] and enc["cols"] == [[cols]], (enc["rows"], enc["cols"], rows, cols)
    assert pv.dtype == np.float32 and pv.shape[0] == len(frames), (pv.shape, len(frames))
    assert enc["pixel_attention_mask"].all()
    mine = []
    for f in frames:
        y = f
        if kwargs["do_rescale"]:
            y = proc.rescale(y, kwargs["rescale_factor"])
        if kwargs["do_normalize"]:
            y = proc.normalize(y, kwargs["image_mean"], kwargs["image_std"])
        mine.append(np.asarray(y, np.float32))
    assert np.array_equal(np.stack(mine), pv), "step-by-step differs from the processor"
    tiles = [np.ascontiguousarray(f.transpose(1, 2, 0)) for f in frames]
    return {
        "input": name,
        "config": cfg,
        "rows": int(rows),
        "cols": int(cols),
        "num_tiles": len(frames),
        "tile_height": int(frames[0].shape[1]),
        "tile_width": int(frames[0].shape[2]),
        "tiles_wsum64": [wsum64(t.tobytes()) for t in tiles],
        "pixel_values_wsum64": wsum64(np.ascontiguousarray(pv, "<f4").tobytes()),
        "pixel_values_sum": float(pv.astype(np.float64).sum()),
    }


FILTERS = {
    "NEAREST": 0, "LANCZOS": 1, "BILINEAR": 2, "BICUBIC": 3, "BOX": 4, "HAMMING": 5,
    "MKS2013": 6, "MKS2021": 7,
}


def resize_cases() -> list[dict]:
    out = []
    sources = {
        "L": ("gray_333x250.png", "L"),
        "LA": ("la_120x90.png", "LA"),
        "RGB": ("portrait_90x200.png", "RGB"),
        "RGBA": ("rgba_100x80.png", "RGBA"),
    }
    for mode, (name, want) in sources.items():
        im = load(name)
        assert im.mode == want, (name, im.mode)
        w, h = im.size
        sizes = [
            (w // 3 + 1, h // 4 + 3),      # down both
            (w * 2 + 5, h * 3 - 1),        # up both
            (w * 2 - 3, h // 2 + 1),       # up x, down y
            (w, h // 3),                   # vertical only
            (w // 5, h),                   # horizontal only
            (1, 1),
            (7, 2 * h + 1),
        ]
        for fname, fnum in FILTERS.items():
            for (ow, oh) in sizes:
                r = im.resize((ow, oh), resample=fnum)
                assert r.mode == want
                out.append({"input": name, "mode": mode, "filter": fnum, "width": ow, "height": oh,
                            "wsum64": wsum64(np.asarray(r).tobytes())})
    return out


def decode_cases(names: list[str]) -> list[dict]:
    proc = Idefics3ImageProcessorPil()
    out = []
    for name in names:
        for orient in (True, False):
            im = load(name, orient)
            rgb = decoded_rgb(proc, im)
            entry = {"input": name, "orient": orient, "pil_mode": im.mode, "width": rgb.shape[1],
                     "height": rgb.shape[0], "rgb_wsum64": wsum64(rgb.tobytes()),
                     "rgb_mean": [float(rgb[..., c].mean()) for c in range(3)]}
            if name.endswith(".jpg"):
                # JPEG: libjpeg-turbo and zune-jpeg differ slightly; keep the pixels for a
                # tolerance test when small.
                if rgb.size <= 64 * 1024:
                    (OUT / f"{name}.{'o' if orient else 'u'}.rgb").write_bytes(rgb.tobytes())
                    entry["rgb_file"] = f"{name}.{'o' if orient else 'u'}.rgb"
            out.append(entry)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    names = make_inputs()
    real = {"longest_edge": 2048, "max_image_size": 512, "resample": 1, "split": True}
    small = {"longest_edge": 96, "max_image_size": 32, "resample": 1, "split": True}
    small_nosplit = dict(small, split=False)
    real_nosplit = dict(real, split=False)
    processor = []
    for n in ["photo_640x480.png", "rgb_3x700.png", "rgb_701x5.png", "rgb_1x1.png", "rgba_100x80.png"]:
        # only the first runs in the default (unoptimised) test; the others with --ignored
        processor.append(dict(run_processor(n, real), heavy=n != "photo_640x480.png"))
    processor.append(dict(run_processor("photo_640x480.png", real_nosplit), heavy=True))
    for n in names:
        if n.endswith(".jpg"):
            continue
        processor.append(run_processor(n, small))
        processor.append(run_processor(n, small_nosplit))
    # other filters, no resize, normalisation variants, an odd tile size
    for r in (0, 2, 3, 4, 5, 6, 7):
        processor.append(run_processor("portrait_90x200.png", dict(small, resample=r)))
    processor.append(dict(run_processor("photo_640x480.png", dict(real, do_resize=False)), heavy=True))
    processor.append(run_processor("gray_333x250.png", dict(small, longest_edge=101, max_image_size=27)))
    processor.append(run_processor("rgba_256x256.png", dict(small, image_mean=[0.485, 0.456, 0.406],
                                                            image_std=[0.229, 0.224, 0.225])))
    processor.append(run_processor("la_120x90.png", dict(small, do_rescale=False)))
    processor.append(run_processor("pal_200x150.png", dict(small, do_normalize=False)))
    processor.append(run_processor("rgb_3x700.png", dict(small, longest_edge=5000, max_image_size=700)))
    # JPEG through the whole pipeline (tolerance test): keep the small-setting pixel values
    jpeg = run_processor("photo_640x480.jpg", small)
    im = load("photo_640x480.jpg")
    proc = Idefics3ImageProcessorPil(size={"longest_edge": 96}, max_image_size={"longest_edge": 32}, resample=1)
    pv = proc(images=[[im]], return_tensors="np")["pixel_values"][0]
    (OUT / "photo_640x480.jpg.small.f32").write_bytes(np.ascontiguousarray(pv, "<f4").tobytes())
    jpeg["pixel_values_file"] = "photo_640x480.jpg.small.f32"
    cases = {
        "generator": "tools/reference/image_cases.py",
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "processor_class": "Idefics3ImageProcessorPil",
        "note": "tiles_wsum64 digests HWC u8 RGB tiles; pixel_values_wsum64 float32 LE [n,3,H,W]; resize: the output bytes as np.asarray gives them (HWC)",
        "processor": processor,
        "jpeg": jpeg,
        "resize": resize_cases(),
        "decode": decode_cases(names),
    }
    with open(OUT / "cases.json", "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(processor)} processor cases, {len(cases['resize'])} resize cases, "
          f"{len(cases['decode'])} decode cases; fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
