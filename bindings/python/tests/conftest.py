"""Shared fixtures: the repository's tiny model and images, and the CLI to compare against."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny-idefics3"
IMAGES = FIXTURES / "images"


def cli_path() -> str:
    """The smolcap CLI: $SMOLCAP_CLI, else the dev build in the target directory."""
    p = os.environ.get("SMOLCAP_CLI")
    if p:
        return p
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        c = target / profile / "smolcap"
        if c.exists():
            return str(c)
    pytest.skip("no smolcap CLI built (set SMOLCAP_CLI)")


def cli_caption(images, *flags):
    """`smolcap caption --json` on the tiny model: a list of {"text", "token_ids"}."""
    cmd = [cli_path(), "caption", "--model", str(TINY), "--json"]
    for i in images:
        cmd += ["--image", str(i)]
    cmd += [str(f) for f in flags]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["captions"]


def greedy_reference(case: str):
    """transformers' greedy tokens of a fixture case (cut after the first stop token)."""
    c = json.loads((FIXTURES / "expected" / "tiny-idefics3" / "cases.json").read_text())
    eos = c["eos_token_id"]
    case = next(x for x in c["cases"] if x["name"] == case)
    seq = case["greedy"]["sequences_raw"]
    seq = seq[0] if seq and isinstance(seq[0], list) else seq
    return seq[: seq.index(eos) + 1] if eos in seq else seq


@pytest.fixture(scope="session")
def model():
    import smolcap

    return smolcap.Model.load(TINY)
