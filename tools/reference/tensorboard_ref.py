"""Reference for `src/train/tensorboard.rs`: TensorBoard itself reads and re-encodes our event file.

Input: `tests/fixtures/tensorboard/events.out.tfevents.1700000000.golden`, written by our Rust
writer (`SMOLCAP_WRITE_TB_FIXTURE=1 cargo test --lib train::tensorboard` rewrites it).

1. `tensorboard.backend.event_processing.event_accumulator.EventAccumulator` loads it and lists
   every scalar (tag, step, wall_time, value);
2. the same events are rebuilt with TensorBoard's own protobuf classes (`event_pb2`, `summary_pb2`)
   and framed with TensorBoard's `RecordWriter`; the bytes must equal our file;
3. a few edge-case events (negative and large steps, 0.0, NaN, inf, a non-ASCII tag) are encoded with
   `event_pb2` as hex payloads for the Rust unit test.

Writes `tests/fixtures/tensorboard/expected.json`. Needs `pip install tensorboard`.
Run from the repository root: python tools/reference/tensorboard_ref.py
"""

import io
import json
import math
import struct

import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

FIX = "tests/fixtures/tensorboard"
GOLDEN = f"{FIX}/events.out.tfevents.1700000000.golden"


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def scalar_event(wall_time, step, tag, value):
    return event_pb2.Event(
        wall_time=wall_time,
        step=step,
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]),
    )


def main():
    acc = event_accumulator.EventAccumulator(GOLDEN, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    scalars = []
    for tag in sorted(acc.Tags()["scalars"]):
        for ev in acc.Scalars(tag):
            scalars.append(
                {
                    "tag": tag,
                    "step": ev.step,
                    "wall_time_bits": f64_bits(ev.wall_time),
                    "value_bits": f32_bits(ev.value),
                }
            )
            print(f"  {tag:18s} step {ev.step:>14d} wall {ev.wall_time:.4f} value {ev.value!r}")

    # Rebuild the whole file with TensorBoard's own encoder, in file order.
    golden = open(GOLDEN, "rb").read()
    buf = io.BytesIO()
    rw = RecordWriter(buf)
    first = True
    pos = 0
    while pos < len(golden):
        (n,) = struct.unpack_from("<Q", golden, pos)
        payload = golden[pos + 12 : pos + 12 + n]
        pos += 12 + n + 4
        ev = event_pb2.Event.FromString(payload)
        if first:
            assert ev.file_version == "brain.Event:2", ev
            rebuilt = event_pb2.Event(wall_time=ev.wall_time, file_version="brain.Event:2")
            first = False
        else:
            (v,) = ev.summary.value
            rebuilt = scalar_event(ev.wall_time, ev.step, v.tag, v.simple_value)
        rw.write(rebuilt.SerializeToString())
    same = buf.getvalue() == golden
    print(f"tensorboard {tensorboard.__version__}: {len(scalars)} scalars read; "
          f"TensorBoard's own encoding byte-identical: {same}")
    assert same

    edge = []
    for wall_time, step, tag, value in [
        (1700000000.5, -1, "neg/step", 1.5),
        (1700000001.0, 0, "zero/step", 0.0),
        (1700000002.0, 2**40 + 3, "big/step", -2.25),
        (1.0e9, 7, "nan", math.nan),
        (1.0e9, 8, "inf", math.inf),
        (1.0e9, 9, "eval/Größe ✓", 3.0e-39),
    ]:
        payload = scalar_event(wall_time, step, tag, value).SerializeToString()
        edge.append(
            {
                "wall_time_bits": f64_bits(wall_time),
                "step": step,
                "tag": tag,
                "value_bits": f32_bits(value),
                "payload_hex": payload.hex(),
            }
        )
    version = event_pb2.Event(wall_time=1700000000.25, file_version="brain.Event:2").SerializeToString()
    rec = io.BytesIO()
    RecordWriter(rec).write(version)
    out = {
        "generator": "tools/reference/tensorboard_ref.py",
        "tensorboard": tensorboard.__version__,
        "scalars": scalars,
        "edge_events": edge,
        "version_record_hex": rec.getvalue().hex(),
    }
    with open(f"{FIX}/expected.json", "w") as fh:
        json.dump(out, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


if __name__ == "__main__":
    main()
