"""Seeds of the `gguf_load` fuzz target (fuzz/corpus/gguf_load/): each is a little-endian u32
`n`, then `n` bytes of text GGUF, then the projector GGUF.

    python tools/reference/make_gguf_fuzz_seeds.py

seed-pair: the llama.cpp-written tiny pair (tests/fixtures/gguf-llama-cpp) whole, so the fuzzer
starts from a file that loads; seed-meta: the same metadata without tensors (small, for the
header and metadata paths). Needs only the standard library.
"""
import os
import struct

root = os.path.join(os.path.dirname(__file__), "..", "..")
fx = os.path.join(root, "tests", "fixtures", "gguf-llama-cpp")
out = os.path.join(root, "fuzz", "corpus", "gguf_load")
os.makedirs(out, exist_ok=True)


def strip_tensors(b):
    """The same file with tensor_count 0 and nothing after the metadata (walked by hand)."""
    pos = 24
    n_kv = struct.unpack_from("<Q", b, 16)[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(t, pos):
        if t == 8:
            n = struct.unpack_from("<Q", b, pos)[0]
            return pos + 8 + n
        if t == 9:
            et, n = struct.unpack_from("<IQ", b, pos)
            pos += 12
            for _ in range(n):
                pos = value(et, pos)
            return pos
        return pos + sizes[t]

    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", b, pos)[0]
        pos += 8 + klen
        t = struct.unpack_from("<I", b, pos)[0]
        pos = value(t, pos + 4)
    head = bytearray(b[:pos])
    struct.pack_into("<Q", head, 8, 0)
    head += b"\0" * (-len(head) % 32)
    return bytes(head)


text = open(os.path.join(fx, "tiny-idefics3-q8_0.gguf"), "rb").read()
proj = open(os.path.join(fx, "mmproj-tiny-idefics3-q8_0.gguf"), "rb").read()
for name, t, p in [("seed-pair", text, proj),
                   ("seed-meta", strip_tensors(text), strip_tensors(proj))]:
    with open(os.path.join(out, name), "wb") as f:
        f.write(struct.pack("<I", len(t)) + t + p)
    print(name, 4 + len(t) + len(p), "bytes")
