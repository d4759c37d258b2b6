#!/usr/bin/env python3
"""Generates the data files embedded by src/metrics (commit their output):

  src/metrics/data/wordnet.bin       what NLTK METEOR needs from WordNet 3.0: per POS the lemma
                                     index (lemma -> synsets) and morphy exception lists, and per
                                     synset the lemma names METEOR can match (no '_', no capitals,
                                     since METEOR compares against lower-cased reference words).
  src/metrics/data/punkt_english.bin NLTK's English punkt_tab model (Apache-2.0).

Both are zlib streams. Read through NLTK's own WordNetCorpusReader so lemma names, syntactic
markers and satellites are exactly what `nltk.corpus.wordnet` gives.

Inputs: an nltk_data dir (default: the first of nltk.data.path holding corpora/wordnet) with
  corpora/wordnet            WordNet 3.0 dict files (Debian: apt-get install wordnet-base
                             wordnet-sense-index; copy /usr/share/wordnet/* there and add the
                             standard 45-line `lexnames` file)
  tokenizers/punkt_tab/english

    python tools/reference/gen_metric_data.py
"""

import os
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "src", "metrics", "data")
POS = ["n", "v", "a", "r"]


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def u32(n):
    return n.to_bytes(4, "little")


def usable(name):
    return "_" not in name and not any("A" <= c <= "Z" for c in name)


def build_wordnet():
    import warnings
    warnings.simplefilter("ignore")
    from nltk.corpus import wordnet as wn

    assert wn.get_version() == "3.0", wn.get_version()
    # synset (pos letter of data file, offset) -> usable names
    syn_names = {}
    entries = {p: {} for p in POS}  # lemma -> list of synset keys
    for lemma, posmap in wn._lemma_pos_offset_map.items():
        for p in POS:
            offs = posmap.get(p)
            if not offs:
                continue
            keys = []
            for off in offs:
                key = (p, off)
                if key not in syn_names:
                    ss = wn.synset_from_pos_and_offset(p, off)
                    syn_names[key] = sorted({l.name() for l in ss.lemmas() if usable(l.name())})
                if syn_names[key]:
                    keys.append(key)
            if keys:
                entries[p][lemma] = keys
    exceptions = {p: dict(wn._exception_map[p]) for p in POS}

    strings = set()
    for p in POS:
        strings.update(entries[p])
        for k, bases in exceptions[p].items():
            strings.add(k)
            strings.update(b for b in bases if b in entries[p])
    for names in syn_names.values():
        strings.update(names)
    strings = sorted(strings)
    sid = {s: i for i, s in enumerate(strings)}
    # number synsets by first use in lemma order so index deltas stay small
    used, synid = [], {}
    for p in POS:
        for lemma in sorted(entries[p], key=lambda l: sid[l]):
            for k in entries[p][lemma]:
                if k not in synid:
                    synid[k] = len(used)
                    used.append(k)

    out = bytearray(b"WNIX2\0")
    # front-coded sorted strings: shared-prefix length (bytes), suffix, '\n'
    blob = bytearray()
    prev_s = b""
    for st in strings:
        b = st.encode("utf-8")
        k = 0
        while k < min(len(b), len(prev_s), 255) and b[k] == prev_s[k]:
            k += 1
        blob.append(k)
        blob += b[k:] + b"\n"
        prev_s = b
    out += u32(len(strings)) + u32(len(blob)) + blob
    # Synset names are not stored: every usable name of a synset is a lemma of the index that
    # lists the synset, so the reader rebuilds synset -> names by inverting the index entries
    # flagged "this lemma is a name of that synset" (low bit of each synset delta).
    inverse = {}
    for p in POS:
        for lemma, keys in entries[p].items():
            for k in keys:
                if lemma in syn_names[k]:
                    inverse.setdefault(k, set()).add(lemma)
    for k in used:
        assert inverse.get(k, set()) == set(syn_names[k]), (k, syn_names[k], inverse.get(k))
    out += u32(len(used))
    for p in POS:
        items = sorted((sid[l], sorted((synid[k], l in syn_names[k]) for k in keys))
                       for l, keys in entries[p].items())
        out += u32(len(items))
        prev = 0
        for s, syns in items:
            out += varint(s - prev) + varint(len(syns))
            prev = s
            last = 0
            for x, is_name in syns:
                out += varint(((x - last) << 1) | int(is_name))
                last = x
    for p in POS:
        items = sorted((sid[k], [sid[b] for b in bases if b in entries[p]])
                       for k, bases in exceptions[p].items())
        out += u32(len(items))
        prev = 0
        for s, bases in items:
            out += varint(s - prev) + varint(len(bases))
            prev = s
            for b in bases:
                out += varint(b)
    z = zlib.compress(bytes(out), 9)
    print("  strings blob", len(blob), "zlib", len(zlib.compress(bytes(blob), 9)))
    with open(os.path.join(DATA, "wordnet.bin"), "wb") as f:
        f.write(z)
    print(f"wordnet.bin: {len(strings)} strings, {len(used)} synsets, "
          f"{sum(len(entries[p]) for p in POS)} index entries, raw {len(out)} B, zlib {len(z)} B")


def build_punkt():
    import nltk.data
    d = nltk.data.find("tokenizers/punkt_tab/english/")
    parts = []
    for name in ["abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab"]:
        with open(os.path.join(str(d), name), encoding="utf-8") as f:
            lines = sorted(l for l in f.read().split("\n") if l)
        parts.append("\n".join(lines))
    z = zlib.compress("\0".join(parts).encode("utf-8"), 9)
    with open(os.path.join(DATA, "punkt_english.bin"), "wb") as f:
        f.write(z)
    print(f"punkt_english.bin: zlib {len(z)} B")


if __name__ == "__main__":
    os.makedirs(DATA, exist_ok=True)
    build_punkt()
    build_wordnet()
