#!/usr/bin/env python3
"""JPEG corpus for bit-exact decoding (issue 25): what Pillow decodes, smolcap must decode.

Run from the repository root:

    python tools/reference/make_jpeg_corpus.py [--turbojpeg /path/to/libturbojpeg.so]

Writes tests/fixtures/jpeg/: small JPEG files and expected.json with, per file, what Pillow 13
(`Image.open`, its bundled libjpeg-turbo: accurate integer IDCT, fancy upsampling) gives:
mode, size and the `wsum64` digest (tools/reference/image_cases.py) of the decoded bytes in the
native mode (L, RGB, or CMYK as Pillow holds it: Adobe-inverted), of transformers'
`convert_to_rgb` of that image, and of `convert_to_rgb(ImageOps.exif_transpose(image))` (what
`transformers.image_utils.load_image` feeds the processor); or the error Pillow raises.

Most files are written by Pillow itself (qualities, 4:4:4 / 4:2:2 / 4:2:0, progressive,
optimized Huffman tables, restart intervals, grayscale, CMYK, EXIF orientation, odd sizes).
Pillow cannot write 4:4:0, 4:1:1, 4:4:1, YCCK, Adobe RGB, arithmetic-coded, lossless or 12-bit
files; those are written through the TurboJPEG API of a libjpeg-turbo shared library given by
`--turbojpeg` (build the one vendored by the turbojpeg-sys crate:
`cmake -S $CARGO_HOME/registry/src/*/turbojpeg-sys-1.2.0/libjpeg-turbo -B /tmp/ljt -DENABLE_SHARED=1
-DENABLE_STATIC=0 && cmake --build /tmp/ljt --target turbojpeg`). Only the expected values come from
Pillow. Truncated files check that a cut-off JPEG is an error, as in Pillow.

`--bench` also times Pillow's decode (`Image.open(...).load()`, median of repeats) on the corpus
and on larger photos written to /tmp, for the speed comparison in docs/FIDELITY.md.
"""

import argparse
import ctypes
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import PIL.features
from PIL import Image, ImageOps

OUT = Path("tests/fixtures/jpeg")


def wsum64(b: bytes) -> str:
    """The digest of tools/reference/image_cases.py (mirrored by `wsum64` in
    src/processor/image.rs); copied so this script needs no transformers."""
    w = np.frombuffer(b + b"\0" * ((-len(b)) % 8), "<u8")
    z = np.arange(len(w), dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    h = np.sum(w * (z | np.uint64(1)), dtype=np.uint64) ^ np.uint64(len(b))
    return f"{int(h):016x}"


def convert_to_rgb(im: Image.Image) -> Image.Image:
    """transformers.image_transforms.convert_to_rgb (PIL path)."""
    if im.mode == "RGB":
        return im
    im = im.convert("RGBA") if im.mode in ("LA", "RGBA", "P") or "transparency" in im.info \
        else im
    if im.mode == "RGBA":
        bg = Image.new("RGBA", im.size, (255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def synth(w: int, h: int, seed: int, channels: int = 3) -> np.ndarray:
    """Smooth fields, hard edges and noise: exercises every IDCT coefficient and the chroma
    upsampling at edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / max(w - 1, 1), yy / max(h - 1, 1)
    planes = []
    for c in range(channels):
        p = 128 + 100 * np.sin(3.0 * u * (c + 1) + 2.0 * v + seed + c) * np.cos(4.0 * v - c)
        planes.append(p)
    img = np.stack(planes, -1)
    for _ in range(5):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(1, max(2, w // 2)), y0 + rng.integers(1, max(2, h // 2))
        img[y0:y1, x0:x1] = rng.uniform(0, 255, size=channels)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- TurboJPEG (ctypes) for the files Pillow cannot write -------------------------------------
TJSAMP = {"444": 0, "422": 1, "420": 2, "gray": 3, "440": 4, "411": 5, "441": 6}
TJPF_RGB, TJPF_GRAY, TJPF_CMYK = 0, 6, 11
TJCS_RGB, TJCS_YCCK = 0, 4
P_QUALITY, P_SUBSAMP, P_PRECISION, P_COLORSPACE = 3, 4, 7, 8
P_PROGRESSIVE, P_ARITHMETIC, P_LOSSLESS, P_LOSSLESSPSV, P_RESTARTROWS = 12, 14, 15, 16, 19


class TurboJpeg:
    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.tj3Init.restype = ctypes.c_void_p
        self.lib.tj3Init.argtypes = [ctypes.c_int]
        self.lib.tj3Set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.lib.tj3GetErrorStr.restype = ctypes.c_char_p
        self.lib.tj3GetErrorStr.argtypes = [ctypes.c_void_p]
        for f in ("tj3Compress8", "tj3Compress12"):
            getattr(self.lib, f).argtypes = [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
        self.lib.tj3Free.argtypes = [ctypes.c_void_p]
        self.lib.tj3Destroy.argtypes = [ctypes.c_void_p]

    def encode(self, pixels: np.ndarray, pf: int, params: dict, twelve: bool = False) -> bytes:
        h, w = pixels.shape[:2]
        tj = self.lib.tj3Init(0)
        for k, v in params.items():
            assert self.lib.tj3Set(tj, k, v) == 0, (k, v)
        buf, size = ctypes.c_void_p(), ctypes.c_size_t()
        if twelve:
            src = np.ascontiguousarray(pixels.astype(np.int16) * 16)
            rc = self.lib.tj3Compress12(tj, src.ctypes.data, w, 0, h, pf, ctypes.byref(buf),
                                        ctypes.byref(size))
        else:
            src = np.ascontiguousarray(pixels)
            rc = self.lib.tj3Compress8(tj, src.ctypes.data, w, 0, h, pf, ctypes.byref(buf),
                                       ctypes.byref(size))
        if rc != 0:
            raise RuntimeError(self.lib.tj3GetErrorStr(tj).decode())
        out = ctypes.string_at(buf, size.value)
        self.lib.tj3Free(buf)
        self.lib.tj3Destroy(tj)
        return out


def pil_jpeg(arr: np.ndarray, mode: str, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr, mode).save(b, "JPEG", **kw)
    return b.getvalue()


def build_files(tj):
    """(name, bytes) of every corpus file."""
    files = []
    sizes = [(1, 1), (7, 5), (17, 13), (33, 31), (65, 47), (127, 9), (9, 127), (160, 120)]
    seed = 0
    for w, h in sizes:
        seed += 1
        rgb = synth(w, h, seed)
        for q in (10, 50, 75, 90, 95, 100):
            for ss in (0, 1, 2):
                if (w, h) != (160, 120) and q in (10, 90):
                    continue
                files.append((f"rgb_{w}x{h}_q{q}_s{ss}.jpg",
                              pil_jpeg(rgb, "RGB", quality=q, subsampling=ss)))
        files.append((f"prog_{w}x{h}_s2.jpg",
                      pil_jpeg(rgb, "RGB", quality=85, subsampling=2, progressive=True)))
        files.append((f"gray_{w}x{h}_q80.jpg", pil_jpeg(rgb[..., 1].copy(), "L", quality=80)))
    big = synth(301, 257, 99)
    files += [
        ("prog_301x257_s0.jpg", pil_jpeg(big, "RGB", quality=90, subsampling=0, progressive=True)),
        ("prog_301x257_s1_opt.jpg",
         pil_jpeg(big, "RGB", quality=70, subsampling=1, progressive=True, optimize=True)),
        ("opt_301x257_s2.jpg", pil_jpeg(big, "RGB", quality=80, subsampling=2, optimize=True)),
        ("rst_blocks_301x257_s2.jpg",
         pil_jpeg(big, "RGB", quality=85, subsampling=2, restart_marker_blocks=3)),
        ("rst_rows_301x257_s0.jpg",
         pil_jpeg(big, "RGB", quality=85, subsampling=0, restart_marker_rows=1)),
        ("prog_gray_301x257.jpg", pil_jpeg(big[..., 0].copy(), "L", quality=75, progressive=True)),
        ("gray_rst_301x257.jpg",
         pil_jpeg(big[..., 2].copy(), "L", quality=90, restart_marker_blocks=5)),
    ]
    cmyk = synth(97, 61, 7, channels=4)
    files += [
        ("cmyk_97x61_q90.jpg", pil_jpeg(cmyk, "CMYK", quality=90)),
        ("cmyk_97x61_q50_prog.jpg", pil_jpeg(cmyk, "CMYK", quality=50, progressive=True)),
    ]
    exif_img = synth(64, 40, 21)
    for orient in (3, 6, 8):
        ex = Image.Exif()
        ex[0x0112] = orient
        files.append((f"exif{orient}_64x40.jpg",
                      pil_jpeg(exif_img, "RGB", quality=92, exif=ex.tobytes())))
    if tj is not None:
        odd = synth(83, 45, 31)
        for samp in ("440", "411", "441"):
            files.append((f"tj_{samp}_83x45.jpg",
                          tj.encode(odd, TJPF_RGB, {P_QUALITY: 85, P_SUBSAMP: TJSAMP[samp]})))
            files.append((f"tj_{samp}_prog_83x45.jpg",
                          tj.encode(odd, TJPF_RGB, {P_QUALITY: 75, P_SUBSAMP: TJSAMP[samp],
                                                    P_PROGRESSIVE: 1})))
        files += [
            ("tj_ycck_97x61.jpg", tj.encode(cmyk, TJPF_CMYK, {P_QUALITY: 90, P_SUBSAMP: 2,
                                                              P_COLORSPACE: TJCS_YCCK})),
            ("tj_adobe_rgb_83x45.jpg", tj.encode(odd, TJPF_RGB, {P_QUALITY: 90, P_SUBSAMP: 0,
                                                                 P_COLORSPACE: TJCS_RGB})),
            ("tj_arith_83x45.jpg", tj.encode(odd, TJPF_RGB, {P_QUALITY: 85, P_SUBSAMP: 2,
                                                             P_ARITHMETIC: 1})),
            ("tj_arith_prog_83x45.jpg",
             tj.encode(odd, TJPF_RGB, {P_QUALITY: 85, P_SUBSAMP: 1, P_ARITHMETIC: 1,
                                       P_PROGRESSIVE: 1})),
            ("tj_rst_rows_440_83x45.jpg",
             tj.encode(odd, TJPF_RGB, {P_QUALITY: 85, P_SUBSAMP: 4, P_RESTARTROWS: 1})),
            ("tj_lossless_83x45.jpg", tj.encode(odd, TJPF_RGB, {P_LOSSLESS: 1, P_LOSSLESSPSV: 1})),
            ("tj_lossless_gray_83x45.jpg",
             tj.encode(odd[..., :1].copy(), TJPF_GRAY, {P_LOSSLESS: 1, P_LOSSLESSPSV: 6})),
            ("tj_12bit_83x45.jpg", tj.encode(odd, TJPF_RGB, {P_QUALITY: 85, P_SUBSAMP: 2,
                                                             P_PRECISION: 12}, twelve=True)),
        ]
    # Truncations of a progressive and a baseline file: Pillow raises; so must smolcap.
    base = dict(files)["rgb_160x120_q75_s2.jpg"]
    prog = dict(files)["prog_301x257_s0.jpg"]
    files += [
        ("trunc_half_160x120.jpg", base[: len(base) // 2]),
        ("trunc_noeoi_160x120.jpg", base[:-2]),
        ("trunc_tail10_160x120.jpg", base[:-10]),
        ("trunc_prog_301x257.jpg", prog[: len(prog) * 2 // 3]),
        ("trunc_header_160x120.jpg", base[:300]),
    ]
    return files


def expected(name: str, data: bytes) -> dict:
    e = {"file": name, "bytes": len(data)}
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            e.update(mode=im.mode, width=im.width, height=im.height,
                     native_wsum64=wsum64(im.tobytes()),
                     rgb_wsum64=wsum64(convert_to_rgb(im).tobytes()))
            o = ImageOps.exif_transpose(im)
            e["oriented_size"] = [o.width, o.height]
            e["oriented_rgb_wsum64"] = wsum64(convert_to_rgb(o).tobytes())
    except Exception as ex:  # noqa: BLE001 - the error is the expected value
        e["error"] = f"{type(ex).__name__}: {str(ex).split(' <')[0]}"
    return e


def bench(files):
    def med(f, reps):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return sorted(ts)[len(ts) // 2]

    ok = [d for n, d in files if expected(n, d).get("error") is None]
    t = med(lambda: [Image.open(io.BytesIO(d)).load() for d in ok], 7)
    print(f"pillow corpus ({len(ok)} files): {t * 1e3:.2f} ms")
    for w, h, q in ((640, 480, 90), (1600, 1200, 90), (4000, 3000, 90)):
        p = Path(f"/tmp/jpeg_bench_{w}x{h}.jpg")
        if not p.exists():
            p.write_bytes(pil_jpeg(synth(w, h, 5), "RGB", quality=q, subsampling=2))
        d = p.read_bytes()
        t = med(lambda: Image.open(io.BytesIO(d)).load(), 9)
        print(f"pillow {p}: {t * 1e3:.2f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--turbojpeg", help="libturbojpeg.so (libjpeg-turbo >= 3.0)")
    ap.add_argument("--bench", action="store_true")
    args = ap.parse_args()
    tj = TurboJpeg(args.turbojpeg) if args.turbojpeg else None
    files = build_files(tj)
    if args.bench:
        bench(files)
        return
    if tj is None:
        sys.exit("--turbojpeg is needed to write the full corpus")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.jpg"):
        old.unlink()
    cases = []
    for name, data in files:
        (OUT / name).write_bytes(data)
        cases.append(expected(name, data))
    meta = {"pillow": PIL.__version__,
            "libjpeg_turbo": PIL.features.version("libjpeg_turbo"),
            "cases": cases}
    (OUT / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    total = sum(len(d) for _, d in files)
    errs = sum(1 for c in cases if "error" in c)
    print(f"{len(files)} files, {total} bytes, {errs} expected errors")
    for c in cases:
        if "error" in c:
            print(" ", c["file"], c["error"])


if __name__ == "__main__":
    main()
