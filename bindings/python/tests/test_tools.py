"""Metrics, merging, training and the shard split from Python, against the CLI."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

import smolcap
from conftest import FIXTURES, IMAGES, TINY, cli_path

ADAPTER = FIXTURES / "adapters" / "text_r4_a8"


def test_score_equals_cli(tmp_path):
    refs = [["a dog on a bench", "a dog sitting on a wooden bench"], ["two cats sleeping", "cats asleep"]]
    cands = ["a dog sits on a bench", "a cat"]
    ann = {"annotations": [{"image_id": i, "caption": r} for i, rs in enumerate(refs) for r in rs]}
    res = [{"image_id": i, "caption": c} for i, c in enumerate(cands)]
    (tmp_path / "refs.json").write_text(json.dumps(ann))
    (tmp_path / "cands.json").write_text(json.dumps(res))
    for suite in ("seed", "coco"):
        got = smolcap.score(refs, cands, suite=suite)
        out = subprocess.run(
            [cli_path(), "score", "--json", "--suite", suite, "--refs", tmp_path / "refs.json",
             "--cands", tmp_path / "cands.json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        cli = json.loads(out.stdout)
        assert got["corpus"] == cli["corpus"]
        assert got["images"] == 2 and got["suite"] == suite
        for m, values in got["per_image"].items():
            assert values == [p[m] for p in cli["per_image"]]
    with pytest.raises(smolcap.InvalidArgumentError):
        smolcap.score(refs, cands[:1])
    with pytest.raises(smolcap.InvalidArgumentError):
        smolcap.score(refs, cands, suite="bleurt")


def test_merge_equals_cli(tmp_path):
    rep = smolcap.merge(TINY, [(ADAPTER, 0.5)], tmp_path / "py")
    assert rep["merged_modules"] > 0 and rep["shards"] == 1
    out = subprocess.run(
        [cli_path(), "merge", "--base-model", TINY, "--adapter-dir", f"{ADAPTER}:0.5",
         "--save-dir", tmp_path / "cli"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for f in sorted(p.name for p in (tmp_path / "cli").iterdir()):
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    # The merged model captions as the base with the adapter applied.
    merged = smolcap.Model.load(tmp_path / "py")
    base = smolcap.Model.load(TINY)
    img = IMAGES / "photo_640x480.png"
    assert (merged.caption(img, max_new_tokens=12).token_ids
            == base.caption(img, max_new_tokens=12, adapters=[(ADAPTER, 0.5)]).token_ids)
    with pytest.raises(smolcap.InvalidArgumentError, match="exists"):
        smolcap.merge(TINY, [ADAPTER], tmp_path / "py")
    smolcap.merge(TINY, [ADAPTER], tmp_path / "py", overwrite=True)


def batch():
    imgs = [IMAGES / "photo_640x480.png", np.asarray(Image.open(IMAGES / "gray_120x90.png"))]
    return list(zip(imgs, ["a red and white photo", "a gray picture of nothing"]))


def test_trainer_steps_saves_and_resumes(model, tmp_path):
    t = smolcap.Trainer(model, r=4, alpha=8.0, dropout=0.0, lr=5e-3, total_steps=10, seed=1)
    assert t.trainable_parameters > 0
    loss0, tokens = t.evaluate(batch())
    assert tokens > 0 and np.isfinite(loss0)
    s1 = t.step(batch())
    assert s1["step"] == 1 and s1["examples"] == 2 and np.isfinite(s1["loss"])
    assert s1["loss"] == pytest.approx(loss0, rel=1e-4)
    t.save_checkpoint(tmp_path / "ckpt", data_state={"epoch": 0, "pos": 2})
    s2 = t.step(batch())
    r, state = smolcap.Trainer.resume(model, tmp_path / "ckpt")
    assert state == {"epoch": 0, "pos": 2} and r.step_count == 1
    assert r.step(batch())["loss"] == s2["loss"]
    for _ in range(3):
        t.step(batch())
    assert t.evaluate(batch())[0] < loss0
    t.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    # The saved adapter changes the captions' likelihood as it was trained to.
    img, cap = batch()[0]
    assert (model.score_caption(img, cap, adapters=[tmp_path / "adapter"]).mean
            < model.score_caption(img, cap).mean)
    with pytest.raises(smolcap.InvalidArgumentError):
        t.step([])
    with pytest.raises(smolcap.InvalidArgumentError, match="pair"):
        t.step([IMAGES / "photo_640x480.png"])


def test_shard_of_matches_the_cli_split():
    assert [smolcap.shard_of(10, f"{i}/3") for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert smolcap.shard_of(0, "0/1") == (0, 0)
    with pytest.raises(smolcap.InvalidArgumentError, match="I/N"):
        smolcap.shard_of(5, "3/3")
