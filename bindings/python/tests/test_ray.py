"""examples/python/ray_caption.py on a local Ray cluster (2 CPUs, 2 actors): the captions of the
parquet test dataset equal `smolcap eval`'s, and the metrics over the union equal its metrics.
Skipped when Ray is not installed (CI installs it with SMOLCAP_CI_RAY=1)."""

import importlib.util
import json
import subprocess
import time

import pytest

from conftest import FIXTURES, ROOT, TINY, cli_path

ray = pytest.importorskip("ray")


def example():
    spec = importlib.util.spec_from_file_location("ray_caption", ROOT / "examples" / "python" / "ray_caption.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_two_actors_caption_like_the_cli(tmp_path):
    data = FIXTURES / "datasets" / "coco_captions" / "data" / "test-00000-of-00001.parquet"
    out = subprocess.run(
        [cli_path(), "eval", "--base-model-id", TINY, "--dataset-id", FIXTURES / "datasets" / "coco_captions",
         "--split", "test", "--max-new-tokens", "12", "--batch-size", "2", "--thumbnail-size", "0",
         "--output-dir", tmp_path / "eval"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cli = {p["image_id"]: p["caption"] for p in json.loads((tmp_path / "eval" / "predictions.json").read_text())}
    cli_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAYON_NUM_THREADS": "1"}})
    try:
        ex = example()
        args = ex.parse_args(["--model", str(TINY), "--parquet", str(data), "--output", str(tmp_path / "preds.jsonl"),
                              "--metrics", str(tmp_path / "metrics.json"), "--actors", "2",
                              "--batch-size", "2", "--ray-batch-size", "2", "--max-new-tokens", "12"])
        result = ex.run(args)
    finally:
        ray.shutdown()
    print(f"Ray run {time.perf_counter() - t:.1f} s")
    preds = result["predictions"]
    got = {p["image_id"]: p["caption"] for p in preds if p["caption"] is not None}
    assert got == cli
    # The corrupt image is reported, not fatal (the CLI skips it too).
    failed = [p for p in preds if p["caption"] is None]
    assert [p["image_id"] for p in failed] == [105] and "ImageError" in failed[0]["error"]
    # Input order is kept, and the union scores as the single-process run.
    assert [p["image_id"] for p in preds] == [101, 102, 103, 105, 104]
    assert result["scores"]["corpus"] == pytest.approx(cli_metrics["corpus"], rel=1e-12)
    lines = (tmp_path / "preds.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["image_id"] == 101
