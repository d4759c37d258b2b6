#!/usr/bin/env python3
"""Check that a PEFT adapter dir (e.g. one written by smolcap) loads in peft, and that a merged model dir
loads in transformers, on the tiny Idefics3 fixture and the photo_640x480 case.

    /work/venv/bin/python tools/reference/check_adapter.py ADAPTER_DIR[:SCALE] [ADAPTER_DIR[:SCALE] ...]
        [--base tests/fixtures/tiny-idefics3] [--expect-logits FILE.safetensors] [--merged MODEL_DIR]
        [--tol 1e-4] [--weight-tol 1e-6]

Adapter check (always):
  * PeftModel.from_pretrained(base, DIR0, adapter_name="a0"), load_adapter(DIRi, adapter_name="ai"),
    base_model.set_adapter([...]), LoraLayer.set_scale(ai, SCALEi) (default 1.0), eval mode; so the forward is
    y = W x + sum_i SCALE_i * (alpha_i/r_i) * B_i A_i x (alpha/sqrt(r) with use_rslora).
  * strict load: the adapter file's keys and values must be exactly what peft's get_peft_model_state_dict returns
    for the loaded adapter (no unexpected / missing / silently dropped tensors).
  * logits_last (and logits_all when present) against --expect-logits, or else against the committed fixture
    that matches (tests/fixtures/expected/adapters/<name>.safetensors where the adapter's tensors equal
    tests/fixtures/adapters/<name>'s within 1e-6, or the two-adapter combination fixture).
Merged check (--merged MODEL_DIR):
  * AutoModelForImageTextToText / AutoProcessor load MODEL_DIR (hub or transformers-5 config layout, single file
    or sharded); its config reads back to the base's values; its processor gives the same inputs.
  * its logits vs the base+adapter(s) logits (within --tol), and every tensor vs peft's merge_and_unload() of
    the same adapters/scales (float32: within --weight-tol; bf16/f16 files: within one unit in the last place
    of peft's f32 result cast to that dtype).
Exit status: 0 all checks passed, 1 a check failed, 2 nothing to compare / bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_peft_fixtures as mp  # noqa: E402
from make_peft_fixtures import mf  # noqa: E402

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file as torch_load_file  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

FAIL = []


def check(ok: bool, msg: str) -> None:
    print(("  ok    " if ok else "  FAIL  ") + msg)
    if not ok:
        FAIL.append(msg)


def parse_adapter(arg: str) -> tuple[Path, float]:
    p = Path(arg)
    if not p.is_dir() and ":" in arg:
        d, s = arg.rsplit(":", 1)
        return Path(d), float(s)
    return p, 1.0


def load_peft(base_dir: Path, adapters: list[tuple[Path, float]]) -> PeftModel:
    names = [f"a{i}" for i in range(len(adapters))]
    pm = PeftModel.from_pretrained(mp.load_base(base_dir), str(adapters[0][0]), adapter_name=names[0]).eval()
    for n, (d, _) in zip(names[1:], adapters[1:]):
        pm.load_adapter(str(d), adapter_name=n)
    pm.base_model.set_adapter(names, inference_mode=True)
    for m in pm.modules():
        if isinstance(m, LoraLayer):
            for n, (_, s) in zip(names, adapters):
                m.set_scale(n, s)
    return pm.eval()


def strict_keys(pm: PeftModel, adapters) -> None:
    for i, (d, _) in enumerate(adapters):
        name = f"a{i}"
        got = get_peft_model_state_dict(pm, adapter_name=name, save_embedding_layers=False)
        want = torch_load_file(str(d / "adapter_model.safetensors"))
        extra, missing = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        check(not extra and not missing,
              f"{d}: {len(want)} tensors, all consumed by peft and nothing missing"
              + (f" (unexpected: {extra[:5]}, missing: {missing[:5]})" if extra or missing else ""))
        bad = [k for k in sorted(set(want) & set(got)) if not torch.equal(want[k].to(got[k].dtype), got[k])]
        check(not bad, f"{d}: loaded values equal the file" + (f" (differ: {bad[:5]})" if bad else ""))
        cfg = pm.peft_config[name]
        mods = mp.lora_modules(pm, name)
        vis = sum(".vision_model." in m for m in mods)
        rs = sorted({(v["r"], v["lora_alpha"], round(v["scaling"], 6)) for v in mods.values()})
        print(f"  {d}: peft_type={cfg.peft_type.value} use_dora={cfg.use_dora} use_rslora={cfg.use_rslora} "
              f"{len(mods)} LoRA modules ({vis} vision), modules_to_save={mp.modules_to_save_of(pm)}, "
              f"(r, alpha, scaling incl. scale)={rs}")


def match_fixture(adapters) -> Path | None:
    """The committed expected file whose adapter tensors equal these (within 1e-6)."""
    names = []
    for d, _ in adapters:
        sd = torch_load_file(str(d / "adapter_model.safetensors"))
        found = None
        for fx in sorted(mp.ADAPTER_DIR.iterdir()):
            f = fx / "adapter_model.safetensors"
            if not f.exists():
                continue
            ref = torch_load_file(str(f))
            if set(ref) == set(sd) and all(float((ref[k].float() - sd[k].float()).abs().max()) <= 1e-6 for k in ref):
                found = fx.name
                break
        names.append(found)
    for i, (d, _) in enumerate(adapters):
        if names[i] is None and (mp.ADAPTER_DIR / d.name / "adapter_model.safetensors").exists():
            names[i] = d.name  # same name as a committed fixture but other tensors: compare anyway (will differ)
            print(f"  {d}: tensors differ from tests/fixtures/adapters/{d.name}; comparing with its logits anyway")
    scales = [s for _, s in adapters]
    if len(adapters) == 1 and names[0] and scales[0] == 1.0:
        return mp.EXP / f"{names[0]}.safetensors"
    if [(n, s) for n, s in zip(names, scales)] == [tuple(x) for x in mp.COMBO["adapters"]]:
        return mp.EXP / f"{mp.COMBO['name']}.safetensors"
    print(f"  no committed fixture matches (matched names {names}, scales {scales})")
    return None


def read_model_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(str(model_dir / f), framework="pt") as h:
            for k in h.keys():
                assert k not in out, f"{k} in two shards"
                out[k] = h.get_tensor(k)
    return out


def check_merged(model_dir: Path, base_dir: Path, adapters, inputs, want_logits: torch.Tensor, tol, wtol) -> None:
    print(f"merged dir {model_dir}:")
    m = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    check(type(m).__name__ == "Idefics3ForConditionalGeneration", f"loads as {type(m).__name__}")
    try:
        mf.check_loaded_config(m.config, json.load(open(base_dir / "config.json")))
        check(True, "config reads back to the base model's values")
    except AssertionError as e:
        check(False, f"config differs from the base: {e}")
    try:
        proc = AutoProcessor.from_pretrained(str(model_dir))
        pin, _ = mp.photo_inputs(proc)
        check(all(torch.equal(pin[k], inputs[k]) for k in inputs), f"AutoProcessor ({type(proc).__name__}) loads; "
              "same input_ids/pixel_values")
    except Exception as e:  # noqa: BLE001
        check(False, f"AutoProcessor failed: {type(e).__name__}: {e}")
    with torch.no_grad():
        lg = m(**inputs).logits[0]
    d_all = float((lg - want_logits).abs().max())
    dts = sorted({str(p.dtype).replace("torch.", "") for p in read_model_tensors(model_dir).values()})
    hint = "" if dts == ["float32"] else f"; the dir holds {dts} weights: pass a larger --tol"
    check(d_all <= tol, f"merged logits_all vs base+adapter(s) (peft, unmerged): max |diff| {d_all:.3g} (tol {tol:g})"
          + hint)
    # tensors vs peft's merge_and_unload
    ref = load_peft(base_dir, adapters).merge_and_unload().state_dict()
    got = read_model_tensors(model_dir)
    extra, missing = sorted(set(got) - set(ref)), sorted(set(ref) - set(got))
    check(not extra and not missing, f"tensor names equal the base model's ({len(ref)})"
          + (f" (extra {extra[:5]}, missing {missing[:5]})" if extra or missing else ""))
    worst, worst_k, bad = 0.0, None, []
    for k in sorted(set(got) & set(ref)):
        g, r = got[k], ref[k]
        if g.shape != r.shape:
            bad.append(f"{k} shape {tuple(g.shape)} != {tuple(r.shape)}")
            continue
        if g.dtype == torch.float32:
            d = float((g - r).abs().max())
            lim = wtol
        else:
            rc = r.to(g.dtype)
            d = float((g.float() - rc.float()).abs().max())
            eps = torch.finfo(g.dtype).eps
            lim = float((rc.float().abs() * eps).max()) + wtol
        if d > worst:
            worst, worst_k = d, k
        if d > lim:
            bad.append(f"{k} max|diff| {d:.3g}")
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in got.values()})
    check(not bad, f"tensors vs peft merge_and_unload: worst {worst:.3g} ({worst_k}), dtypes {dtypes}"
          + (f"; {len(bad)} off: {bad[:5]}" if bad else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="+", help="ADAPTER_DIR[:SCALE]")
    ap.add_argument("--base", default=str(mp.BASE))
    ap.add_argument("--expect-logits", help="safetensors with logits_last (and optionally logits_all)")
    ap.add_argument("--merged", help="merged model dir to check against base+adapter(s)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--weight-tol", type=float, default=1e-6)
    a = ap.parse_args()
    base_dir = Path(a.base)
    adapters = [parse_adapter(x) for x in a.adapters]
    for d, _ in adapters:
        if not (d / "adapter_config.json").is_file() or not (d / "adapter_model.safetensors").is_file():
            print(f"{d}: not an adapter dir (adapter_config.json + adapter_model.safetensors)")
            return 2

    proc = AutoProcessor.from_pretrained(str(base_dir))
    inputs, _ = mp.photo_inputs(proc)
    print(f"adapters {[(str(d), s) for d, s in adapters]} on {base_dir}, case {mp.CASE}:")
    pm = load_peft(base_dir, adapters)
    strict_keys(pm, adapters)
    with torch.no_grad():
        logits = pm(**inputs).logits[0]
    with pm.disable_adapter(), torch.no_grad():
        base_logits = pm(**inputs).logits[0]
    print(f"  max |logits - base logits| = {float((logits - base_logits).abs().max()):.4g}")

    expect = Path(a.expect_logits) if a.expect_logits else match_fixture(adapters)
    compared = False
    if expect is not None:
        e = torch_load_file(str(expect))
        d_last = float((logits[-1] - e["logits_last"]).abs().max())
        check(d_last <= a.tol, f"logits_last vs {expect}: max |diff| {d_last:.3g} (tol {a.tol:g})")
        if "logits_all" in e:
            d_all = float((logits - e["logits_all"]).abs().max())
            check(d_all <= a.tol, f"logits_all vs {expect}: max |diff| {d_all:.3g}")
        compared = True
    if a.merged:
        check_merged(Path(a.merged), base_dir, adapters, inputs, logits, a.tol, a.weight_tol)
        compared = True
    if not compared:
        print("nothing to compare against: pass --expect-logits FILE or --merged DIR")
        return 1 if FAIL else 2
    print("PASS" if not FAIL else f"FAIL ({len(FAIL)} checks)")
    return 0 if not FAIL else 1


if __name__ == "__main__":
    sys.exit(main())
