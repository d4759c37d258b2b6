#!/usr/bin/env python3
"""PEFT LoRA adapter fixtures and their expected outputs (ground truth for smolcap's adapter support).

Run from the repository root, after make_fixtures.py (it reads tests/fixtures/tiny-idefics3 and the photo):

    /work/venv/bin/python tools/reference/make_peft_fixtures.py

Deterministic (fixed seeds, CPU, float32, PYTHONHASHSEED=0 — peft writes a list `target_modules` from a
Python set, so its order in adapter_config.json depends on string hashing; the script re-executes itself
with PYTHONHASHSEED=0 when it is not set). It writes:

  tests/fixtures/adapters/<name>/                     adapter_config.json + adapter_model.safetensors as
                                                      peft's save_pretrained writes them (README.md kept
                                                      only for seed_style_r2_a5)
  tests/fixtures/expected/adapters/<name>.safetensors logits_last, logits_all, image_features with the
                                                      adapter(s) active (also for the two-adapter combination)
  tests/fixtures/expected/adapters/<name>_merged.safetensors   merge_and_unload() weights of every module
                                                      that had LoRA or modules_to_save (base-model names);
                                                      for seed_style_r2_a5 they are in merged_seed_style/
  tests/fixtures/expected/adapters/merged_seed_style/ complete merged model dir (hub layout)
  tests/fixtures/expected/adapters/base.safetensors   base-model logits_last (same inputs)
  tests/fixtures/expected/adapters/cases.json         everything else (configs, modules, scales, greedy ids)
"""

from __future__ import annotations

import os
import sys

import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets 2 threads + deterministic algorithms, offline env)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file as torch_load_file  # noqa: E402
from safetensors.torch import save_file as torch_save_file  # noqa: E402

import peft  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
transformers.logging.set_verbosity_error()
try:
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

ROOT = mf.ROOT
BASE_REL = "tests/fixtures/tiny-idefics3"  # relative: it ends up in adapter_config.json base_model_name_or_path
BASE = ROOT / BASE_REL
ADAPTER_DIR = ROOT / "tests" / "fixtures" / "adapters"
EXP = ROOT / "tests" / "fixtures" / "expected" / "adapters"
BASE_EXP = ROOT / "tests" / "fixtures" / "expected" / "tiny-idefics3"
CASE = "photo_640x480"
IMAGE = "photo_640x480.png"
MIN_GAP = 0.05

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEXT_SEVEN_RE = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

# name, LoraConfig kwargs, seed, gamma (|s*B*A| element std relative to the base weight's 1.2/sqrt(in)),
# modules_to_save perturbation (relative), DoRA magnitude perturbation (relative)
ADAPTERS = [
    dict(name="text_r4_a8", seed=401, gamma=0.35,
         cfg=dict(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=TEXT_SEVEN_RE, use_rslora=False)),
    dict(name="seed_style_r2_a5", seed=412, gamma=0.5, task_type="CAUSAL_LM", keep_readme=True,
         cfg=dict(r=2, lora_alpha=5, lora_dropout=0.05, target_modules=list(SEVEN))),
    dict(name="rslora_r4_a6", seed=403, gamma=0.3,
         cfg=dict(r=4, lora_alpha=6, lora_dropout=0.05, use_rslora=True,
                  target_modules=["q_proj", "v_proj", "down_proj", "out_proj", "fc1", "fc2"])),
    dict(name="connector_save", seed=424, gamma=0.3, mts_gamma=0.25,
         cfg=dict(r=2, lora_alpha=3, target_modules=r".*text_model.*\.(q_proj|v_proj)",
                  modules_to_save=["connector"])),
    dict(name="rank_pattern", seed=405, gamma=0.4,
         cfg=dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                  layers_to_transform=[1],
                  rank_pattern={"model.text_model.layers.1.self_attn.q_proj": 4},
                  alpha_pattern={"model.text_model.layers.1.self_attn.q_proj": 6, "down_proj": 7})),
    dict(name="text_r2_a3_b", seed=456, gamma=0.5,
         cfg=dict(r=2, lora_alpha=3, target_modules=["o_proj", "down_proj"])),
    dict(name="dora_r2", seed=417, gamma=0.3, dora_gamma=0.1,
         cfg=dict(r=2, lora_alpha=4, use_dora=True, target_modules=r".*text_model.*\.(q_proj|v_proj)")),
]
# two adapters active at once: (adapter, scale) with y = W x + sum_i scale_i * (alpha_i/r_i) * B_i A_i x
COMBO = {"name": "combo_text_r4_a8_x1_text_r2_a3_b_x0.5", "adapters": [("text_r4_a8", 1.0), ("text_r2_a3_b", 0.5)]}
MERGED_DIR_OF = "seed_style_r2_a5"


# --------------------------------------------------------------------------------------------
def load_base(path=BASE_REL):
    return AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32).eval()


def photo_inputs(proc=None):
    """The photo_640x480 case: the chat-template prompt + the photo, through the processor (tiny-idefics3's)."""
    proc = proc or AutoProcessor.from_pretrained(BASE_REL)
    rendered = proc.apply_chat_template(mf.MESSAGES, add_generation_prompt=True)
    inputs = proc(text=rendered, images=[Image.open(mf.IMG_DIR / IMAGE)], return_tensors="pt")
    return {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")}, rendered


def eos_pad(base=BASE):
    g = json.load(open(Path(base) / "generation_config.json"))
    return g["eos_token_id"], g["pad_token_id"]


def hf_model(m):
    """The transformers model under a PeftModel (LoRA layers injected in place) or the model itself."""
    return m.get_base_model() if isinstance(m, PeftModel) else m


def forward_all(model, inputs, base=BASE):
    """({logits_all, logits_last, image_features}, greedy new ids trimmed after the first eos, min top1-top2 gap)."""
    eos, pad = eos_pad(base)
    hf = hf_model(model)
    with torch.no_grad():
        img = hf.model.get_image_features(pixel_values=inputs["pixel_values"],
                                          pixel_attention_mask=inputs["pixel_attention_mask"])
        feats = torch.cat([f.reshape(-1, mf.image_seq_len_of(hf), f.shape[-1]) for f in img.pooler_output], 0)
        logits = model(**inputs).logits[0].to(torch.float32)
    out, new = mf.run_generate(model, inputs)
    steps = torch.stack(out.logits, 1)[0].to(torch.float32)
    greedy = mf.strip_after_eos(new[0].tolist(), eos, pad)
    gap = mf.gap_stats(steps[: len(greedy)])
    tensors = {"logits_all": logits.contiguous(), "logits_last": logits[-1].clone().contiguous(),
               "image_features": feats.contiguous()}
    return tensors, greedy, gap


def lora_modules(model: PeftModel, adapter: str) -> dict:
    """{base-model module name: {r, alpha, scaling, use_rslora, dora, in, out}} for one adapter."""
    out = {}
    for name, mod in model.get_base_model().named_modules():
        if isinstance(mod, LoraLayer) and adapter in mod.lora_A:
            out[name] = {"r": mod.r[adapter], "lora_alpha": mod.lora_alpha[adapter],
                         "scaling": mod.scaling[adapter], "use_rslora": bool(mod.use_rslora.get(adapter, False)),
                         "use_dora": bool(mod.use_dora.get(adapter, False)),
                         "in_features": mod.in_features, "out_features": mod.out_features}
    return dict(sorted(out.items()))


def modules_to_save_of(model: PeftModel) -> list[str]:
    from peft.utils.other import ModulesToSaveWrapper
    return sorted(n for n, m in model.get_base_model().named_modules() if isinstance(m, ModulesToSaveWrapper))


def randomize_adapter(pm: PeftModel, seed: int, gamma: float, mts_gamma: float = 0.0, dora_gamma: float = 0.0):
    """B is zero at init: draw A ~ N(0, 1/in), B ~ N(0, (gamma*1.2/(s*sqrt(r)))^2) so that the element std of
    s*B*A is gamma * 1.2/sqrt(in) (the base weights' std); perturb modules_to_save copies and DoRA magnitudes."""
    g = torch.Generator().manual_seed(seed)
    base = pm.get_base_model()
    with torch.no_grad():
        for name, p in sorted(base.named_parameters(), key=lambda kv: kv[0]):
            if ".lora_A." in name:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif ".lora_B." in name:
                mod = base.get_submodule(name.split(".lora_B.")[0])
                s = mod.scaling["default"]
                r = p.shape[1]
                fan_in = mod.in_features
                p.copy_(torch.randn(p.shape, generator=g) * (gamma * 1.2 / math.sqrt(fan_in)) / (s * math.sqrt(r)))
            elif ".lora_magnitude_vector." in name:
                p.mul_(1.0 + dora_gamma * torch.randn(p.shape, generator=g))
            elif ".modules_to_save.default." in name:
                if p.ndim == 2:
                    p.add_(torch.randn(p.shape, generator=g) * (mts_gamma * 1.2 / math.sqrt(p.shape[1])))
                else:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1 * mts_gamma)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tensors(tensors: dict, path: Path):
    torch_save_file({k: v.detach().clone().contiguous() for k, v in sorted(tensors.items())}, str(path),
                    metadata={"format": "pt"})


def maxdiff(a, b) -> float:
    return float((a - b).abs().max())


# --------------------------------------------------------------------------------------------
def make_adapter(spec, inputs) -> dict:
    name = spec["name"]
    out = ADAPTER_DIR / name
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(spec["seed"])
    base = load_base()
    cfg = LoraConfig(task_type=spec.get("task_type"), **spec["cfg"])
    pm = get_peft_model(base, cfg).eval()
    randomize_adapter(pm, spec["seed"], spec["gamma"], spec.get("mts_gamma", 0.0), spec.get("dora_gamma", 0.0))
    with torch.no_grad():
        mem_logits = pm(**inputs).logits[0]
    pm.save_pretrained(str(out))
    if not spec.get("keep_readme"):
        (out / "README.md").unlink()
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["adapter_config.json", "adapter_model.safetensors"]
                           + (["README.md"] if spec.get("keep_readme") else [])), files
    return {"mem_logits": mem_logits}


def evaluate_adapter(spec, inputs, base_t) -> tuple[dict, dict]:
    """Reload the saved adapter the way a user does and record the expectations."""
    name = spec["name"]
    adir = ADAPTER_DIR / name
    pm = PeftModel.from_pretrained(load_base(), str(adir)).eval()
    assert not pm.get_base_model().training
    tensors, greedy, gap = forward_all(pm, inputs)
    mods = lora_modules(pm, "default")
    mts = modules_to_save_of(pm)
    # removing the adapter restores the base exactly
    with pm.disable_adapter(), torch.no_grad():
        off = pm(**inputs).logits[0]
    restored_disable = maxdiff(off, base_t["logits_all"])
    unloaded = pm.unload()
    with torch.no_grad():
        restored_unload = maxdiff(unloaded(**inputs).logits[0], base_t["logits_all"])
    # peft's unload() keeps the *trained copy* of a modules_to_save module (ModulesToSaveWrapper
    # .unload_and_optionally_merge_module returns modules_to_save[active]); only disable_adapter() restores it
    assert restored_disable == 0.0, restored_disable
    assert (restored_unload == 0.0) == (not mts), (restored_unload, mts)

    # merge on a fresh copy
    pm2 = PeftModel.from_pretrained(load_base(), str(adir)).eval()
    merged = pm2.merge_and_unload()
    base_sd = load_base().state_dict()
    msd = merged.state_dict()
    assert sorted(msd) == sorted(base_sd), "merged model has other keys than the base"
    changed = sorted(k for k in msd if not torch.equal(msd[k], base_sd[k]))
    want = {f"{m}.weight" for m in mods}
    for m in mts:
        want |= {k for k in msd if k.startswith(m + ".")}
    # every weight that changed is one we store; DoRA/LoRA with bias='none' leaves biases alone
    assert set(changed) <= want, set(changed) - want
    merged_t = {k: msd[k] for k in sorted(want)}
    with torch.no_grad():
        merged_logits = merged(**inputs).logits[0]
    merged_vs_unmerged = maxdiff(merged_logits, tensors["logits_all"])
    assert merged_vs_unmerged < 1e-4, merged_vs_unmerged

    sd = torch_load_file(str(adir / "adapter_model.safetensors"))
    acfg = json.load(open(adir / "adapter_config.json"))
    vision = [m for m in mods if ".vision_model." in m]
    case = {
        "name": name,
        "adapter_dir": f"tests/fixtures/adapters/{name}",
        "adapter_config": acfg,
        "seed": spec["seed"], "gamma": spec["gamma"],
        "lora_modules": mods,
        "num_lora_modules": len(mods),
        "vision_lora_modules": vision,
        "modules_to_save": mts,
        "safetensors_keys": {k: list(v.shape) for k, v in sorted(sd.items())},
        "greedy": {"settings": {"max_new_tokens": 12, "do_sample": False}, "token_ids": greedy,
                   "text": PROC.tokenizer.decode(greedy, skip_special_tokens=True),
                   "min_top1_top2_gap": gap},
        "max_abs_logit_diff_vs_base": maxdiff(tensors["logits_all"], base_t["logits_all"]),
        "image_features_changed": not torch.equal(tensors["image_features"], base_t["image_features"]),
        "max_abs_image_features_diff_vs_base": maxdiff(tensors["image_features"], base_t["image_features"]),
        "disable_adapter_restores_base_max_diff": restored_disable,
        "unload_logits_max_diff_vs_base": restored_unload,
        "merged": {"file": (f"tests/fixtures/expected/adapters/{name}_merged.safetensors" if name != MERGED_DIR_OF
                            else "tests/fixtures/expected/adapters/merged_seed_style/model.safetensors"),
                   "tensors": sorted(merged_t), "changed_vs_base": changed,
                   "merged_model_logits_max_diff_vs_unmerged": merged_vs_unmerged},
        "tensors": {k: {"dtype": "float32", "shape": list(v.shape)} for k, v in sorted(tensors.items())},
    }
    return case, {"tensors": tensors, "merged": merged_t, "merged_model": merged}


def make_combo(inputs, base_t, singles) -> tuple[dict, dict]:
    (a, sa), (b, sb) = COMBO["adapters"]
    pm = PeftModel.from_pretrained(load_base(), str(ADAPTER_DIR / a), adapter_name=a).eval()
    pm.load_adapter(str(ADAPTER_DIR / b), adapter_name=b)
    pm.base_model.set_adapter([a, b], inference_mode=True)
    for m in pm.modules():
        if isinstance(m, LoraLayer):
            m.set_scale(a, sa)  # scaling[a] = sa * alpha_a / r_a (no-op for modules without a)
            m.set_scale(b, sb)
    assert pm.base_model.active_adapter == [a, b]
    ma, mb = lora_modules(pm, a), lora_modules(pm, b)
    for n, v in ma.items():
        assert abs(v["scaling"] - sa * v["lora_alpha"] / v["r"]) < 1e-12
    for n, v in mb.items():
        assert abs(v["scaling"] - sb * v["lora_alpha"] / v["r"]) < 1e-12
    tensors, greedy, gap = forward_all(pm, inputs)
    # cross-check 1: the same thing with B_b scaled by sb in a copy of adapter b (scale 1 via set_scale default)
    with tempfile.TemporaryDirectory() as td:
        shutil.copy(ADAPTER_DIR / b / "adapter_config.json", Path(td) / "adapter_config.json")
        sd = torch_load_file(str(ADAPTER_DIR / b / "adapter_model.safetensors"))
        sd = {k: (v * sb if ".lora_B." in k else v) for k, v in sd.items()}
        torch_save_file(sd, str(Path(td) / "adapter_model.safetensors"), metadata={"format": "pt"})
        pm2 = PeftModel.from_pretrained(load_base(), str(ADAPTER_DIR / a), adapter_name=a).eval()
        pm2.load_adapter(td, adapter_name=b)
        pm2.base_model.set_adapter([a, b], inference_mode=True)
        with torch.no_grad():
            l2 = pm2(**inputs).logits[0]
    xcheck_b_scaled = maxdiff(l2, tensors["logits_all"])
    assert xcheck_b_scaled < 1e-4, xcheck_b_scaled
    # cross-check 2: explicit y = W x + sum_i s_i (alpha_i/r_i) B_i A_i x via merged weights (W' = W + sum ...)
    base = load_base()
    sa_sd = torch_load_file(str(ADAPTER_DIR / a / "adapter_model.safetensors"))
    sb_sd = torch_load_file(str(ADAPTER_DIR / b / "adapter_model.safetensors"))
    with torch.no_grad():
        for sd_, mods_, s_ in ((sa_sd, ma, sa), (sb_sd, mb, sb)):
            for n, v in mods_.items():
                A = sd_[f"base_model.model.{n}.lora_A.weight"]
                B = sd_[f"base_model.model.{n}.lora_B.weight"]
                base.get_submodule(n).weight += s_ * (v["lora_alpha"] / v["r"]) * (B @ A)
        lm = base(**inputs).logits[0]
    xcheck_manual = maxdiff(lm, tensors["logits_all"])
    assert xcheck_manual < 1e-4, xcheck_manual
    case = {
        "name": COMBO["name"],
        "adapters": [{"name": a, "adapter_dir": f"tests/fixtures/adapters/{a}", "scale": sa},
                     {"name": b, "adapter_dir": f"tests/fixtures/adapters/{b}", "scale": sb}],
        "scale_semantics": "y = W x + sum_i scale_i * (lora_alpha_i / r_i) * B_i A_i x  (alpha/sqrt(r) with rslora); "
                           "peft: PeftModel.from_pretrained(base, A, adapter_name=A); load_adapter(B, adapter_name=B); "
                           "base_model.set_adapter([A, B]); LoraLayer.set_scale(name, scale_i) on every LoRA layer, "
                           "which sets scaling[name] = scale_i * alpha/r. Adapters are added in the order listed "
                           "(result = base(x); result += B_a(A_a(x))*s_a; result += B_b(A_b(x))*s_b).",
        "cross_checks": {"b_with_lora_B_times_scale_max_diff": xcheck_b_scaled,
                         "explicit_weight_sum_max_diff": xcheck_manual},
        "lora_modules": {a: ma, b: mb},
        "greedy": {"settings": {"max_new_tokens": 12, "do_sample": False}, "token_ids": greedy,
                   "text": PROC.tokenizer.decode(greedy, skip_special_tokens=True), "min_top1_top2_gap": gap},
        "max_abs_logit_diff_vs_base": maxdiff(tensors["logits_all"], base_t["logits_all"]),
        "max_abs_logit_diff_vs_first_adapter_alone": maxdiff(tensors["logits_all"], singles[a]["logits_all"]),
        "tensors": {k: {"dtype": "float32", "shape": list(v.shape)} for k, v in sorted(tensors.items())},
    }
    return case, tensors


def write_merged_dir(merged_model, merged_t: dict, name: str, inputs, unmerged_logits) -> dict:
    out = EXP / "merged_seed_style"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as td:
        merged_model.save_pretrained(td, safe_serialization=True)
        saved = sorted(p.name for p in Path(td).iterdir())
        assert "model.safetensors" in saved, saved
        shutil.copy(Path(td) / "model.safetensors", out / "model.safetensors")
    # hub layout: the base dir's config.json (unchanged by a merge) and its tokenizer/processor files
    for f in mf.AUX_FILES:
        shutil.copy(BASE / f, out / f)
    m = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
    p = AutoProcessor.from_pretrained(str(out))
    pin, _ = photo_inputs(p)
    assert all(torch.equal(pin[k], inputs[k]) for k in inputs)
    with torch.no_grad():
        lg = m(**inputs).logits[0]
    d = maxdiff(lg, unmerged_logits)
    assert d < 1e-4, d
    base_keys = sorted(torch_load_file(str(BASE / "model.safetensors")))
    keys = sorted(torch_load_file(str(out / "model.safetensors")))
    assert keys == base_keys
    on_disk = torch_load_file(str(out / "model.safetensors"))
    assert all(torch.equal(on_disk[k], v) for k, v in merged_t.items())
    return {"dir": f"tests/fixtures/expected/adapters/{out.name}", "from_adapter": name,
            "files": sorted(p.name for p in out.iterdir()),
            "note": "model.safetensors from save_pretrained of merge_and_unload() (f32); config.json, "
                    "generation_config.json, tokenizer and processor files copied verbatim from the base dir "
                    "(hub layout). Loads with AutoModelForImageTextToText + AutoProcessor.",
            "logits_max_diff_vs_unmerged_peft": d}


# --------------------------------------------------------------------------------------------
PROC = None


def main() -> None:
    global PROC
    if os.environ.get("PYTHONHASHSEED") != "0":  # order of peft's list target_modules (a set) -> deterministic
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    assert transformers.__version__.startswith("5."), transformers.__version__
    try:
        import torchvision  # noqa: F401
        sys.exit("torchvision is installed: transformers would use the torchvision image processor. Remove it.")
    except ImportError:
        pass
    os.chdir(ROOT)  # base_model_name_or_path is written relative to the repo root
    PROC = AutoProcessor.from_pretrained(BASE_REL)
    inputs, rendered = photo_inputs(PROC)
    # inputs are exactly those of expected/tiny-idefics3/photo_640x480
    bcases = json.load(open(BASE_EXP / "cases.json"))
    bcase = next(c for c in bcases["cases"] if c["name"] == CASE)
    bt = torch_load_file(str(BASE_EXP / f"{CASE}.safetensors"))
    assert inputs["input_ids"][0].tolist() == bcase["input_ids"]
    assert torch.equal(inputs["pixel_values"], bt["pixel_values"])
    assert torch.equal(inputs["pixel_attention_mask"].to(torch.uint8), bt["pixel_attention_mask"])

    base_t, base_greedy, base_gap = forward_all(load_base(), inputs)
    base_check = {k: maxdiff(base_t[k], bt[k]) for k in ("logits_all", "logits_last", "image_features")}
    assert all(v == 0.0 for v in base_check.values()), base_check
    assert base_greedy == bcase["greedy"]["token_ids"], (base_greedy, bcase["greedy"])

    if EXP.exists():
        shutil.rmtree(EXP)
    EXP.mkdir(parents=True)
    ADAPTER_DIR.mkdir(parents=True, exist_ok=True)
    for d in ADAPTER_DIR.iterdir():
        if d.is_dir() and d.name not in {s["name"] for s in ADAPTERS}:
            shutil.rmtree(d)
    save_tensors({"logits_last": base_t["logits_last"]}, EXP / "base.safetensors")

    cases, singles, merged_models, merged_ts = [], {}, {}, {}
    for spec in ADAPTERS:
        mem = make_adapter(spec, inputs)
        case, res = evaluate_adapter(spec, inputs, base_t)
        reload_diff = maxdiff(mem["mem_logits"], res["tensors"]["logits_all"])
        assert reload_diff == 0.0, f"{spec['name']}: save/reload changed logits by {reload_diff}"
        case["saved_then_reloaded_logits_max_diff"] = reload_diff
        g = case["greedy"]
        assert g["min_top1_top2_gap"] > MIN_GAP, (spec["name"], g["min_top1_top2_gap"])
        save_tensors(res["tensors"], EXP / f"{spec['name']}.safetensors")
        if spec["name"] != MERGED_DIR_OF:  # its merged tensors are in merged_seed_style/model.safetensors
            save_tensors(res["merged"], EXP / f"{spec['name']}_merged.safetensors")
        singles[spec["name"]] = res["tensors"]
        merged_models[spec["name"]] = res["merged_model"]
        merged_ts[spec["name"]] = res["merged"]
        cases.append(case)
        print(f"  {spec['name']}: {case['num_lora_modules']} LoRA modules ({len(case['vision_lora_modules'])} vision), "
              f"mts={case['modules_to_save']} greedy={g['token_ids']} gap={g['min_top1_top2_gap']:.4f} "
              f"|dlogit|max={case['max_abs_logit_diff_vs_base']:.3f} img_changed={case['image_features_changed']}")

    combo_case, combo_t = make_combo(inputs, base_t, singles)
    assert combo_case["greedy"]["min_top1_top2_gap"] > MIN_GAP, combo_case["greedy"]
    save_tensors(combo_t, EXP / f"{COMBO['name']}.safetensors")
    print(f"  {COMBO['name']}: greedy={combo_case['greedy']['token_ids']} "
          f"gap={combo_case['greedy']['min_top1_top2_gap']:.4f} xchecks={combo_case['cross_checks']}")

    merged_dir = write_merged_dir(merged_models[MERGED_DIR_OF], merged_ts[MERGED_DIR_OF], MERGED_DIR_OF, inputs,
                                  singles[MERGED_DIR_OF]["logits_all"])

    doc = {
        "generator": "tools/reference/make_peft_fixtures.py",
        "base_model_dir": BASE_REL,
        "versions": {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "dtype": "float32", "device": "cpu", "mode": "eval (lora_dropout inactive)",
        "inputs": {"case": CASE, "same_as": f"tests/fixtures/expected/tiny-idefics3/{CASE}",
                   "note": "input_ids are in that dir's cases.json, pixel_values/pixel_attention_mask in its "
                           "safetensors; prompt rendered with the chat template", "prompt_text": rendered,
                   "input_ids": inputs["input_ids"][0].tolist()},
        "base": {"file": "tests/fixtures/expected/adapters/base.safetensors",
                 "greedy_token_ids": base_greedy, "min_top1_top2_gap": base_gap,
                 "max_diff_vs_expected_tiny_idefics3": base_check,
                 "note": "base logits (no adapter) are bit-identical to expected/tiny-idefics3/photo_640x480; "
                         "for every adapter, disable_adapter() gives these logits exactly; so does unload() except "
                         "for connector_save: peft's unload() keeps the trained modules_to_save copy."},
        "semantics": {
            "scale": "runtime: y = W x + scale * B (A x), scale = lora_alpha/r, or lora_alpha/sqrt(r) when use_rslora; "
                     "r and alpha per module from rank_pattern/alpha_pattern (first key k, in dict order, for which "
                     "re.match(rf'(.*\\.)?({k})$', module_name) matches; module_name as in the base model, e.g. "
                     "model.text_model.layers.1.self_attn.q_proj)",
            "merge": "W' = W + (B @ A) * scale (peft get_delta_weight, f32); DoRA: W' = m / ||W + scale*B@A||_row "
                     "* (W + scale*B@A) (dora_r2 only)",
            "target_modules": "str: re.fullmatch(target_modules, module_name); list: module_name == t or "
                              "module_name.endswith('.' + t). Modules inside modules_to_save are never targeted. "
                              "layers_to_transform (no layers_pattern): layer index = the first numbered segment, "
                              "re.match(r'.*?\\.[^.]*\\.(?P<idx>\\d+)\\.', module_name) — applies to vision "
                              "encoder.layers.N as well as text layers.N",
            "keys": "adapter_model.safetensors keys are 'base_model.model.' + module_name + '.lora_A.weight' "
                    "[r, in] / '.lora_B.weight' [out, r]; DoRA adds '.lora_magnitude_vector' [out]; modules_to_save "
                    "store the whole module's state under 'base_model.model.' + module_name + '.' + param "
                    "(e.g. base_model.model.model.connector.modality_projection.proj.weight) — no marker other than "
                    "the absence of lora_A/lora_B; they replace the base module's weights.",
            "target_modules_order": "peft writes a list target_modules from a Python set: the order is arbitrary.",
        },
        "adapters": cases,
        "combination": combo_case,
        "merged_dir": merged_dir,
    }
    mf.dump_json(EXP / "cases.json", doc)

    total = sum(p.stat().st_size for p in EXP.rglob("*") if p.is_file())
    print(f"  expected/adapters total {total / 1e6:.2f} MB; adapters: "
          + ", ".join(f"{d.name} {sum(p.stat().st_size for p in d.iterdir()) // 1024} KB"
                      for d in sorted(ADAPTER_DIR.iterdir())))
    digest = hashlib.sha256()
    for p in sorted(list(EXP.rglob("*")) + list(ADAPTER_DIR.rglob("*"))):
        if p.is_file():
            digest.update(str(p.relative_to(ROOT)).encode() + b"\0" + sha(p).encode())
    print("  digest of all written files:", digest.hexdigest())


if __name__ == "__main__":
    main()
