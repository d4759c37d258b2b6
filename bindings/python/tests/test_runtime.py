"""The GIL is released during long calls, Ctrl-C cancels cleanly, and repeated calls do not
leak."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import smolcap
from conftest import IMAGES, TINY

PHOTO = IMAGES / "photo_640x480.png"
LONG = dict(max_new_tokens=400, min_new_tokens=400)


def test_other_python_threads_run_during_a_caption(model):
    """While one thread captions, the main thread keeps running Python code: the longest pause
    it sees is far shorter than the caption (a held GIL would stall it for the whole call)."""
    done = threading.Event()
    took = []

    def work():
        t = time.perf_counter()
        model.caption(PHOTO, **LONG)
        took.append(time.perf_counter() - t)
        done.set()

    th = threading.Thread(target=work)
    th.start()
    last = time.perf_counter()
    gap = 0.0
    while not done.is_set():
        now = time.perf_counter()
        gap = max(gap, now - last)
        last = now
    th.join()
    assert took[0] > 0.2, f"caption too short to tell ({took[0]:.3f} s)"
    assert gap < took[0] / 4, f"main thread stalled {gap:.3f} s during a {took[0]:.3f} s caption"


SCRIPT_INTERRUPT = """
import os, signal, sys, threading, time
import smolcap
m = smolcap.Model.load(sys.argv[1])
img = sys.argv[2]
long = dict(max_new_tokens=1200, min_new_tokens=1200)
t = time.perf_counter(); m.caption(img, **long); full = time.perf_counter() - t

def interrupt_after(s):
    threading.Timer(s, lambda: os.kill(os.getpid(), signal.SIGINT)).start()

def timed(call):
    interrupt_after(full / 4)
    t = time.perf_counter()
    try:
        call()
    except KeyboardInterrupt:
        return time.perf_counter() - t
    raise SystemExit("not interrupted")

caption_s = timed(lambda: m.caption(img, **long))
stream_s = timed(lambda: list(m.caption_stream(img, **long)))
tr = smolcap.Trainer(m, r=4, total_steps=100)
batch = [(img, "a long caption " * 30)] * 16
t = time.perf_counter(); tr.step(batch); step_full = time.perf_counter() - t
interrupt_after(step_full / 4)
t = time.perf_counter()
try:
    tr.step(batch)
    raise SystemExit("step not interrupted")
except KeyboardInterrupt:
    step_s = time.perf_counter() - t
assert tr.step_count == 1, tr.step_count
tr.step(batch[:1])
after = m.caption(img, max_new_tokens=12).token_ids
print(full, caption_s, stream_s, step_full, step_s, len(after))
"""


def test_ctrl_c_cancels_a_caption_and_a_step_cleanly():
    out = subprocess.run([sys.executable, "-c", SCRIPT_INTERRUPT, str(TINY), str(PHOTO)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    full, cap, stream, step_full, step, n = out.stdout.split()
    full, cap, stream, step_full, step = map(float, (full, cap, stream, step_full, step))
    print(f"caption {full:.2f} s, interrupted after {cap:.2f} s (stream {stream:.2f} s); "
          f"step {step_full:.2f} s, interrupted after {step:.2f} s")
    assert cap < full * 0.75 and stream < full * 0.75
    assert step < step_full * 0.75
    assert int(n) > 0


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_no_leak_over_1000_calls(model):
    small = IMAGES / "square_32x32.png"
    data = small.read_bytes()
    arr = np.zeros((24, 40, 3), dtype=np.uint8)

    def call(i):
        kind = i % 4
        if kind == 0:
            model.caption(small, max_new_tokens=2)
        elif kind == 1:
            model.caption([data, arr], max_new_tokens=2, batch_size=2)
        elif kind == 2:
            list(model.caption_stream(arr, max_new_tokens=2))
        else:
            try:
                model.caption(b"not an image")
            except smolcap.ImageError:
                pass

    for i in range(200):
        call(i)
    before = rss_mb()
    for i in range(1000):
        call(i)
    grown = rss_mb() - before
    print(f"RSS grew {grown:.1f} MiB over 1000 calls")
    assert grown < 8, f"RSS grew {grown:.1f} MiB over 1000 calls"
