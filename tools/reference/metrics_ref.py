#!/usr/bin/env python3
"""Reference caption metrics for smolcap's `metrics` module (issue 6).

Generates a deterministic caption corpus and scores it with the Python packages the
seed's eval script uses, writing tests/fixtures/metrics/*.json for tests/metrics_parity.rs.

Suites:
  seed  BLEU-1..4 = HF evaluate "bleu" (sacrebleu's 13a tokenizer + the tensorflow/nmt
        corpus BLEU, max_order n, no smoothing; per image: the same on one image),
        METEOR = evaluate "meteor" (nltk meteor_score on word_tokenize, alpha 0.9, beta 3,
        gamma 0.5; corpus = np.mean), ROUGE-L = rouge_score rougeL with the Porter stemmer,
        best F over references (score_multi), corpus = np.mean, CIDEr = pycocoevalcap Cider
        on whitespace-normalised strings.
  coco  pycocoevalcap's COCOEvalCap scorers on its PTBTokenizer output (Java jar):
        Bleu(4) (closest reference length), Rouge (beta 1.2), Cider (CIDEr-D). METEOR of the
        coco suite (Meteor 1.5 jar) is reported separately by --meteor-jar (see README).

Needs: nltk (+ punkt_tab english and WordNet 3.0 under an nltk_data dir; WordNet from Debian's
wordnet-base + wordnet-sense-index copied into <nltk_data>/corpora/wordnet with a `lexnames`
file), rouge-score, pycocoevalcap, sacrebleu, numpy, java.

    python tools/reference/metrics_ref.py            # writes tests/fixtures/metrics/

Corpora: `generated` and `realistic` (natural captions), and since issue 25 `random`
(random tokens from a small vocabulary, uneven lengths), `unicode` (accented Latin, CJK, emoji,
odd punctuation, quotes and spaces) and `sentences` (multi-sentence captions with non-ASCII
starters and ends).
"""

import argparse
import contextlib
import io
import json
import math
import os
import random
import sys
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "metrics")

# ---------------------------------------------------------------------------------------------
# Corpus generation
# ---------------------------------------------------------------------------------------------

SUBJECTS = [
    "a man", "a woman", "two men", "a young boy", "a little girl", "a group of people",
    "a dog", "two dogs", "a black cat", "the cats", "an elephant", "three elephants",
    "a giraffe", "a herd of zebras", "a red bus", "a yellow taxi", "a large airplane",
    "a plate of food", "a pizza", "a bowl of soup", "a teddy bear", "a baseball player",
    "a skier", "a surfer", "a motorcycle", "a bicycle", "a train", "a clock tower",
    "a kid", "a child", "a car", "an automobile", "a couch", "a sofa", "a photo",
    "a picture", "some sheep", "a horse", "people", "children", "a chef", "the players",
]
VERBS = [
    "is sitting on", "sits on", "is standing next to", "stands near", "is riding",
    "rides", "is holding", "holds", "is eating", "eats", "walks along", "walking on",
    "are playing with", "playing in", "is parked in front of", "parked near",
    "is flying over", "flies above", "is lying on", "lies on", "looking at", "looks at",
    "running across", "runs through", "jumping over", "is jumped over", "is covered with",
    "is filled with", "carrying", "carries", "waits at", "waiting for",
]
OBJECTS = [
    "a bench", "the beach", "a wooden table", "a snowy hill", "the street", "a road",
    "a grassy field", "the ocean", "a wave", "a kitchen counter", "a living room",
    "a city street", "the sidewalk", "a frisbee", "a kite", "a laptop", "a cell phone",
    "an umbrella", "a tennis racket", "a skateboard", "the snow", "a fence", "the water",
    "a building", "a bridge", "the sky", "a large window", "a big bed", "a small table",
    "vegetables", "some broccoli", "the runway", "a train station", "the tracks",
]
EXTRAS = [
    "in the background", "on a sunny day", "at night", "next to a tree", "with a smile",
    "near the river", "in a park", "under a blue sky", "during the day", "in the rain",
]
ADJ = ["big", "large", "small", "little", "happy", "old", "new", "red", "white", "brown",
       "beautiful", "pretty", "tall", "fast", "quick", "wooden", "stone"]
NUMBER_WORDS = ["3", "3.5", "1,000", "10:30", "2nd", "1990s", "50%", "$5", "-5", "1/2",
                "2-3", "100", "7", "0.25", "12,345.67"]
ABBREVS = ["Mr. Smith", "Dr. Brown", "St. Louis", "the U.S. flag", "e.g. apples",
           "Mt. Fuji", "Jan. 5", "a.m.", "Inc.", "etc."]
CONTRACTIONS = ["it's", "don't", "man's", "they're", "can't", "won't", "cannot", "I'm",
                "we'll", "she'd", "you've", "dogs'", "isn't", "gonna", "wanna", "o'clock"]
UNICODE_WORDS = ["café", "naïve", "Zürich", "São Paulo", "日本", "über", "crème brûlée",
                 "señor", "Ελλάδα", "Москва", "piñata", "façade", "½", "fiancée"]
EMOJI = ["😀", "🐶", "🍕"]
QUOTES = [('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("(", ")"), ("[", "]"), ("{", "}"),
          ("``", "''")]
PUNCT_INNER = [",", ";", ":", " -", " --", " –", " —", "...", "…", " &"]
ENDINGS = [".", ".", ".", "", "", "!", "?", "...", " .", ". ", "!!", "?!", ".\"", ".)"]
SECOND_SENTENCES = [
    "It is happy.", "The dog runs.", "There is a cat!", "This is nice.", "They are outside.",
    "In the back there is a tree.", "I think it's a dog.", "Some people watch.",
    "The sky is blue.", "it looks old.", "Mr. Smith waves.", "At 5. Something happens.",
]


def make_caption(rng):
    """A COCO-style caption with the noise features the parity tests need."""
    r = rng.random()
    if r < 0.015:
        return ""
    if r < 0.03:
        return rng.choice(["dog", "Dog.", "cat", "A", "Skiing!", "people", "  ", "...",
                           "😀", "café", "X", "2"])
    words = []
    subj = rng.choice(SUBJECTS)
    if rng.random() < 0.3:
        parts = subj.split(" ", 1)
        if len(parts) == 2 and parts[0] in ("a", "an", "the"):
            subj = parts[0] + " " + rng.choice(ADJ) + " " + parts[1]
    words.append(subj)
    words.append(rng.choice(VERBS))
    words.append(rng.choice(OBJECTS))
    if rng.random() < 0.35:
        words.append(rng.choice(EXTRAS))
    text = " ".join(words)
    toks = text.split(" ")
    # insertions
    for feature, p in (("num", 0.12), ("abbr", 0.06), ("contr", 0.1), ("uni", 0.06),
                       ("emoji", 0.02), ("punct", 0.15), ("quote", 0.08), ("rep", 0.05),
                       ("hyphen", 0.05)):
        if rng.random() >= p:
            continue
        pos = rng.randrange(0, len(toks) + 1)
        if feature == "num":
            ins = [rng.choice(NUMBER_WORDS)]
        elif feature == "abbr":
            ins = rng.choice(ABBREVS).split(" ")
        elif feature == "contr":
            ins = [rng.choice(CONTRACTIONS)]
        elif feature == "uni":
            ins = rng.choice(UNICODE_WORDS).split(" ")
        elif feature == "emoji":
            ins = [rng.choice(EMOJI)]
        elif feature == "punct":
            if pos == 0:
                pos = 1
            toks[pos - 1] = toks[pos - 1] + rng.choice(PUNCT_INNER)
            continue
        elif feature == "quote":
            a, b = rng.choice(QUOTES)
            end = min(len(toks), pos + rng.randrange(1, 4))
            if pos >= len(toks):
                continue
            toks[pos] = a + toks[pos]
            toks[end - 1] = toks[end - 1] + b
            continue
        elif feature == "hyphen":  # compounds of two plain words
            if pos < len(toks) - 1 and toks[pos].isalpha() and toks[pos + 1].isalpha():
                toks[pos] = toks[pos] + "-" + toks[pos + 1]
                del toks[pos + 1]
            continue
        else:  # repeated n-grams
            if len(toks) < 2:
                continue
            i = rng.randrange(0, len(toks) - 1)
            n = rng.randrange(1, 3)
            gram = toks[i:i + n]
            toks[i:i] = gram * rng.randrange(1, 4)
            continue
        toks[pos:pos] = ins
    text = " ".join(toks)
    # casing
    c = rng.random()
    if c < 0.5:
        text = text[:1].upper() + text[1:]
    elif c < 0.55:
        text = text.upper()
    elif c < 0.6:
        text = text.title()
    text += rng.choice(ENDINGS)
    if rng.random() < 0.12:
        text = text.rstrip() + (" " if rng.random() < 0.7 else "  ") + rng.choice(SECOND_SENTENCES)
    # whitespace noise
    w = rng.random()
    if w < 0.04:
        text = "  " + text
    elif w < 0.08:
        text = text + "  "
    elif w < 0.11:
        text = text.replace(" ", "  ", 1)
    elif w < 0.13:
        text = text.replace(" ", "\t", 1)
    return text


SYN = {"big": "large", "large": "big", "kid": "child", "child": "kid", "car": "automobile",
       "couch": "sofa", "sofa": "couch", "photo": "picture", "picture": "photo",
       "street": "road", "road": "street", "little": "small", "small": "little",
       "quick": "fast", "pretty": "beautiful", "sits": "sitting", "stands": "standing",
       "rides": "riding", "holds": "holding", "eats": "eating", "dog": "dogs",
       "dogs": "dog", "man": "men", "men": "man", "woman": "women", "runs": "running",
       "looks": "looking", "walks": "walking", "flies": "flying", "lies": "lying"}


def make_candidate(rng, refs):
    """A candidate derived from one reference (synonyms, drops, swaps) or fresh text."""
    r = rng.random()
    if r < 0.015:
        return ""
    if r < 0.03:
        return rng.choice(["dog", "A dog.", "cat", "people", "Dog", "😀", "...", "a"])
    if r < 0.2:
        return make_caption(rng)
    base = rng.choice(refs) or make_caption(rng)
    toks = base.split(" ")
    out = []
    for t in toks:
        x = rng.random()
        core = t.strip(".,!?").lower()
        if x < 0.12 and core in SYN:
            out.append(t.lower().replace(core, SYN[core]))
        elif x < 0.18:
            continue
        elif x < 0.21:
            out.append(t)
            out.append(t)
        else:
            out.append(t)
    if len(out) > 3 and rng.random() < 0.2:
        i = rng.randrange(0, len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    cand = " ".join(out)
    if rng.random() < 0.3:
        cand = cand.lower()
    return cand


def generate_corpus(seed, n_images, n_refs):
    rng = random.Random(seed)
    refs = [[make_caption(rng) for _ in range(n_refs)] for _ in range(n_images)]
    cands = [make_candidate(rng, r) for r in refs]
    return cands, refs


# Wider corpora (issue 25): captions the generator above never writes.
ACCENTED = ["é", "É", "à", "ç", "ñ", "ü", "ö", "ø", "å", "ß", "œ", "æ", "ł", "ő", "ș", "İ", "ı",
            "ẞ", "Ǆ", "ǅ", "ﬁ", "ŉ", "ǰ", "Σ", "ς", "σ", "Ω", "ж", "Я", "ё"]
CJK = ["日本", "東京", "猫", "犬が走る", "一", "二十", "写真", "한국", "사람", "カメラ", "ひらがな", "中文字"]
EMOJIS = ["😀", "🐶", "🍕", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "✔", "☕", "🚲"]
ODD_PUNCT = ["«", "»", "„", "‚", "‹", "›", "“", "”", "‘", "’", "`", "``", "''", "'", "\"", "–",
             "—", "‐", "‑", "…", "·", "•", "¡", "¿", "§", "¶", "†", "©", "®", "™", "°", "±",
             "×", "÷", "½", "¼", "²", "³", "µ", "¹", "%", "&", "#", "@", "*", "+", "=", "<",
             ">", "|", "~", "^", "_", "/", "\\", "(", ")", "[", "]", "{", "}", "!", "?", ".",
             ",", ";", ":", "-", "--", "...", "$", "€", "£", "¥", "\u00a0", "\u2009", "\u200b",
             "\u0301", "\u0308"]
ASCII_WORDS = ["dog", "dogs", "running", "ran", "runs", "cats", "happily", "happiness", "sat",
               "sitting", "bikes", "biking", "generously", "national", "nationalism", "ed",
               "es", "is", "as", "us", "ies", "sses", "ing", "ly", "y", "a", "i", "the", "of"]


def random_word(rng):
    """A token from a random alphabet: ASCII letters, accented Latin, CJK, emoji, digits."""
    r = rng.random()
    if r < 0.3:
        return rng.choice(ASCII_WORDS)
    if r < 0.5:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9)))
    if r < 0.68:
        base = rng.choice(ASCII_WORDS + ["cafe", "naive", "resume", "uber", "senor", "strasse"])
        k = rng.randrange(0, len(base) + 1)
        return base[:k] + rng.choice(ACCENTED) + base[k:]
    if r < 0.78:
        return rng.choice(CJK)
    if r < 0.84:
        return rng.choice(EMOJIS)
    if r < 0.92:
        return str(rng.randint(0, 3000)) + rng.choice(["", "s", "th", ".5", ",000", "%"])
    return "".join(rng.choice(ACCENTED + list("xyzqw")) for _ in range(rng.randint(1, 4)))


def random_caption(rng, vocab=None):
    """Random tokens (from `vocab` when given) joined by spaces, odd punctuation and quotes."""
    n = rng.randint(0, 14)
    toks = []
    for _ in range(n):
        w = rng.choice(vocab) if vocab else random_word(rng)
        x = rng.random()
        if x < 0.15:
            w = rng.choice(ODD_PUNCT) + w
        elif x < 0.3:
            w = w + rng.choice(ODD_PUNCT)
        elif x < 0.35:
            toks.append(rng.choice(ODD_PUNCT))
        c = rng.random()
        if c < 0.15:
            w = w.upper()
        elif c < 0.3:
            w = w.capitalize()
        toks.append(w)
    sep = rng.choice([" ", " ", " ", "  ", "\t", "\u00a0", "\u3000"])
    return sep.join(toks)


def generate_random_tokens(seed, n_images, n_refs):
    """Captions of random tokens from a small vocabulary (many shared n-grams, repeated words,
    candidates and references of very different lengths): where CIDEr's IDF, clipping and
    length penalty see shapes natural captions never give them."""
    rng = random.Random(seed)
    vocab = ["w%d" % i for i in range(40)] + ["a", "the", "of", "A", "The", ".", ","]
    refs, cands = [], []
    for _ in range(n_images):
        rs = []
        for _ in range(rng.choice([1, 2, 5, 5, 5, 7])):
            n = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 30])
            rs.append(" ".join(rng.choice(vocab) for _ in range(n)))
        refs.append(rs)
        base = rng.choice(rs).split()
        x = rng.random()
        if x < 0.3:
            c = base
        elif x < 0.6:
            c = [t for t in base if rng.random() < 0.7] + [rng.choice(vocab)
                                                            for _ in range(rng.randint(0, 6))]
        else:
            c = [rng.choice(vocab) for _ in range(rng.choice([0, 1, 2, 4, 9, 16, 40]))]
        if rng.random() < 0.2 and c:
            c = c * rng.randint(2, 3)
        cands.append(" ".join(c))
    return cands, refs


def generate_unicode(seed, n_images, n_refs):
    """Captions mixing ASCII, accented Latin, CJK, emoji, odd punctuation and quotes; candidates
    copy, recase and perturb a reference so exact, stem and synonym stages all see them."""
    rng = random.Random(seed)
    refs, cands = [], []
    for _ in range(n_images):
        rs = [random_caption(rng) if rng.random() < 0.6 else make_caption(rng) + " " +
              random_caption(rng) for _ in range(n_refs)]
        refs.append(rs)
        base = rng.choice(rs).split(" ")
        out = []
        for t in base:
            x = rng.random()
            if x < 0.1:
                continue
            if x < 0.2:
                t = t.lower() if rng.random() < 0.5 else t.upper()
            elif x < 0.25:
                t = random_word(rng)
            out.append(t)
        cands.append(" ".join(out) if rng.random() < 0.85 else random_caption(rng))
    return cands, refs


STARTERS = ["Él", "Über", "Ça", "Ønsker", "Ästhetik", "İstanbul", "Ελλάδα", "Москва", "東京",
            "«Le", "„Die", "“The", "‘A", "¿Qué", "¡Mira", "(Die", "[The", "…and", "—A", "Ñandú"]
SENT_END = [".", "!", "?", "…", ".»", ".”", "!”", "?’", ".)", "。", "！", "？", ". . .", "..",
            ".\"", ".'", "?!", ". —", "‽"]


def generate_sentences(seed, n_images, n_refs):
    """Several sentences per caption with non-ASCII sentence starters, closing quotes and odd
    sentence ends, so NLTK's sentence splitter (punkt) and word tokenizer meet them."""
    rng = random.Random(seed)

    def sent():
        words = [rng.choice(STARTERS)] if rng.random() < 0.5 else []
        words += make_caption(rng).rstrip(".!? ").split(" ")[: rng.randint(2, 9)]
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words) + 1), random_word(rng))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(ABBREVS))
        return " ".join(w for w in words if w) + rng.choice(SENT_END)

    def caption():
        return (" " if rng.random() < 0.8 else "  ").join(sent() for _ in range(rng.randint(1, 4)))

    refs = [[caption() for _ in range(n_refs)] for _ in range(n_images)]
    cands = []
    for rs in refs:
        c = rng.choice(rs)
        if rng.random() < 0.5:
            c = c.lower()
        if rng.random() < 0.3:
            c = caption()
        cands.append(c)
    return cands, refs


REALISTIC = [
    ("A man riding a wave on top of a surfboard.",
     ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
      "a person on a surf board riding a wave", "A man surfing on a big blue wave.",
      "Surfer in black wetsuit riding a large wave."]),
    ("Two dogs playing with a frisbee in the grass.",
     ["Two dogs are playing with a frisbee on the lawn.", "A pair of dogs fight over a frisbee.",
      "two brown dogs chasing a frisbee in a field", "Dogs play in the grass with a toy.",
      "Two puppies running after a flying disc."]),
    ("A plate of food with broccoli and rice.",
     ["A plate topped with rice, broccoli and chicken.", "A white plate of food with vegetables.",
      "a dish of broccoli and meat over rice", "Healthy dinner: broccoli, rice and chicken.",
      "A meal of chicken, broccoli, and rice on a plate."]),
    ("A red double decker bus driving down a street.",
     ["A red double-decker bus drives down the city street.", "A big red bus on a road in London.",
      "a double decker bus is parked on the side of the road", "The red bus is carrying passengers.",
      "A tour bus travels through town."]),
    ("A giraffe standing next to a tree.",
     ["A giraffe stands next to a tall tree.", "A tall giraffe eating leaves from a tree.",
      "a giraffe in a zoo enclosure near some trees", "One giraffe standing in the shade.",
      "The giraffe is reaching up to the branches."]),
    ("A cat sleeping on a laptop keyboard.",
     ["A cat is laying on top of a laptop computer.", "A gray cat naps on the keyboard.",
      "a kitten sleeping on an open laptop", "The cat's lying across a notebook computer.",
      "A cat curled up on a laptop on a desk."]),
    ("A kitchen with a stove and a refrigerator.",
     ["A kitchen with white cabinets, a stove and a fridge.", "A small kitchen with appliances.",
      "an empty kitchen with a refrigerator and oven", "The kitchen has wood floors and a stove.",
      "A clean kitchen in a small apartment."]),
    ("A baseball player swinging a bat at a ball.",
     ["A baseball player swings his bat at the pitch.", "A batter hitting a ball during a game.",
      "a man swinging a baseball bat on a field", "The batter is about to hit the ball.",
      "A player at home plate swings at a pitch."]),
    ("A woman holding an umbrella in the rain.",
     ["A woman walks in the rain with an umbrella.", "A lady holding a black umbrella.",
      "a person with an umbrella on a rainy street", "Woman standing under her umbrella.",
      "A girl carries an umbrella while it's raining."]),
    ("A train traveling down the tracks.",
     ["A train is traveling down the railroad tracks.", "A long train on the tracks near trees.",
      "a passenger train moving along a railway", "The train pulls into the station.",
      "A freight train going by."]),
    ("An elephant walking through the grass.",
     ["An elephant walks through tall grass.", "A large elephant in a grassy field.",
      "an adult elephant roaming the savanna", "The elephant is walking in the wild.",
      "A big gray elephant standing in grass."]),
    ("A person skiing down a snowy hill.",
     ["A skier is going down a snowy slope.", "A person skiing down a mountain.",
      "a man on skis coming down a hill", "Skier in a red jacket on the slopes.",
      "Someone skiing downhill in fresh snow."]),
    ("A living room with a couch and a television.",
     ["A living room with a sofa and a TV.", "A cozy living room with a couch.",
      "a family room with furniture and a television", "The living room has a big couch.",
      "A room with a couch, a lamp and a TV."]),
    ("A pizza with cheese and pepperoni on a table.",
     ["A pepperoni pizza sitting on a table.", "A large pizza with lots of cheese.",
      "a cheese pizza on a wooden table", "Pizza with pepperoni, ready to eat.",
      "A whole pizza on a pan on the table."]),
    ("A man on a motorcycle on the road.",
     ["A man rides a motorcycle down the road.", "A motorcyclist on a highway.",
      "a person riding a motorbike on a street", "The biker is wearing a helmet.",
      "A man sitting on his motorcycle."]),
    ("A clock tower in the middle of a city.",
     ["A tall clock tower in a city.", "A clock tower next to buildings.",
      "a large tower with a clock on it", "The clock on the tower reads 3:15.",
      "An old clock tower under a blue sky."]),
    ("A group of people flying kites on a beach.",
     ["People flying kites at the beach.", "A group of people with kites on the sand.",
      "several kites in the sky over a beach", "Kids fly colorful kites by the ocean.",
      "Many people enjoy kite flying at the shore."]),
    ("A teddy bear sitting on a bed.",
     ["A brown teddy bear on a bed.", "A stuffed bear sitting on the pillows.",
      "a teddy bear propped up on a bed", "The toy bear sits on a white blanket.",
      "A small teddy bear on a made bed."]),
    ("A bathroom with a toilet and a sink.",
     ["A bathroom with a white toilet and sink.", "A small bathroom with a mirror.",
      "a clean restroom with toilet and sink", "The bathroom has blue tiles.",
      "A toilet next to a sink in a bathroom."]),
    ("A young boy eating a sandwich.",
     ["A young boy eats a big sandwich.", "A kid biting into a sandwich.",
      "a little boy having lunch", "The child is eating a sub sandwich.",
      "A boy enjoys his sandwich at the table."]),
    ("Two zebras standing in a field.",
     ["Two zebras grazing in a field.", "A pair of zebras standing together.",
      "two zebras in the grass", "Zebras stand in a dry field.",
      "Two zebras next to each other."]),
    ("A laptop and a cell phone on a desk.",
     ["A laptop computer and a phone on a desk.", "A desk with a laptop and cellphone.",
      "an open laptop beside a mobile phone", "The desk has a laptop, a phone and a mug.",
      "A computer and a smartphone on a table."]),
    ("A horse pulling a carriage down the street.",
     ["A horse-drawn carriage on a city street.", "A horse pulls a cart down the road.",
      "a carriage being pulled by a white horse", "The horse and buggy travel down the street.",
      "A horse drawn carriage carrying tourists."]),
    ("A bowl of soup with a spoon.",
     ["A bowl of soup and a spoon on a table.", "A hot bowl of vegetable soup.",
      "a spoon in a bowl of soup", "Soup served in a white bowl.",
      "A bowl of tomato soup with bread."]),
    ("A stop sign on the side of the road.",
     ["A red stop sign on a street corner.", "A stop sign next to a road.",
      "a stop sign with graffiti on it", "The stop sign is at an intersection.",
      "A STOP sign near some trees."]),
    ("A tennis player hitting a ball.",
     ["A tennis player swings at the ball.", "A woman playing tennis on a court.",
      "a man hitting a tennis ball with a racket", "The player returns a serve.",
      "A tennis player in white on a clay court."]),
    ("An airplane flying in the sky.",
     ["A large airplane flying through a blue sky.", "A jet in the sky.",
      "an airliner flying overhead", "The plane is flying high above the clouds.",
      "A passenger jet in flight."]),
    ("A bunch of bananas on a table.",
     ["A bunch of ripe bananas on a table.", "Yellow bananas sitting on a counter.",
      "a bundle of bananas", "The bananas are on a wooden table.",
      "Several bananas next to some apples."]),
    ("A dog laying on a couch.",
     ["A dog lying on a sofa.", "A brown dog resting on a couch.",
      "a puppy sleeping on the couch", "The dog is relaxing on the sofa.",
      "A small dog curled up on a couch."]),
    ("A little girl holding a kite.",
     ["A little girl holds a kite in a park.", "A girl with a colorful kite.",
      "a young girl getting ready to fly a kite", "The child is holding her kite.",
      "A small girl carrying a kite outside."]),
    ("Sheep grazing in a green field.",
     ["A flock of sheep grazing in a field.", "Sheep eating grass on a hill.",
      "several sheep in a green pasture", "The sheep are grazing near a fence.",
      "White sheep in a grassy meadow."]),
    ("A man using a laptop in a coffee shop.",
     ["A man works on his laptop at a cafe.", "A guy typing on a laptop in a coffee shop.",
      "a person sitting at a table with a laptop", "The man is drinking coffee and using a computer.",
      "A young man with a laptop in a café."]),
    ("A boat on the water near a dock.",
     ["A small boat docked in the harbor.", "A boat floating near a pier.",
      "a white boat on calm water", "The boat is tied to the dock.",
      "Boats in the water by a wooden dock."]),
    ("A skateboarder doing a trick on a ramp.",
     ["A skateboarder performs a trick on a ramp.", "A guy skateboarding at a skate park.",
      "a young man jumping with his skateboard", "The skater is grinding a rail.",
      "A boy doing tricks on a skateboard."]),
    ("A vase with flowers on a table.",
     ["A vase of flowers sitting on a table.", "Pink flowers in a glass vase.",
      "a bouquet of roses in a vase", "The flowers are in a blue vase.",
      "A vase filled with fresh flowers."]),
    ("A man in a suit and tie.",
     ["A man wearing a suit and tie.", "A businessman in a black suit.",
      "a guy in a tie smiling", "The man is dressed in a gray suit.",
      "A well-dressed man poses for a photo."]),
    ("A fire hydrant on the sidewalk.",
     ["A red fire hydrant on a sidewalk.", "A yellow fire hydrant next to the street.",
      "a fire hydrant in the snow", "The hydrant is painted blue and white.",
      "An old fire hydrant by the curb."]),
    ("A herd of cows in a field.",
     ["A herd of cattle grazing in a pasture.", "Cows standing in a green field.",
      "several cows eating grass", "The cows are walking across the field.",
      "Black and white cows in a meadow."]),
    ("A person holding a hot dog.",
     ["A person holds a hot dog with mustard.", "A hand holding a hotdog in a bun.",
      "someone about to eat a hot dog", "The hot dog has ketchup and onions.",
      "A man eating a hot dog at a game."]),
    ("Two people playing video games.",
     ["Two people playing a video game together.", "Friends play Wii in the living room.",
      "a couple of guys with game controllers", "The kids are playing video games.",
      "Two men holding Wii remotes."]),
    ("A bird sitting on a branch.",
     ["A small bird perched on a tree branch.", "A bird sits on a branch.",
      "a little bird on a twig", "The bird is resting on a limb.",
      "A colorful bird on a branch in a tree."]),
    ("A bed with white sheets in a hotel room.",
     ["A hotel room with a large bed.", "A neatly made bed with white linens.",
      "a bedroom with a king size bed", "The bed has white sheets and pillows.",
      "A clean hotel room with two beds."]),
    ("A woman cutting a cake.",
     ["A woman is cutting a birthday cake.", "A lady slicing a cake with a knife.",
      "a woman cuts into a large cake", "The bride is cutting the wedding cake.",
      "A woman serving cake at a party."]),
    ("A traffic light over a city street.",
     ["A traffic light hanging over a street.", "A green traffic signal at an intersection.",
      "a stop light above the road", "The traffic lights are red.",
      "Traffic signals on a busy city street."]),
    ("A child brushing his teeth.",
     ["A young child brushes his teeth.", "A little boy brushing teeth in the bathroom.",
      "a kid with a toothbrush in his mouth", "The boy is brushing his teeth.",
      "A toddler learning to brush his teeth."]),
    ("A bear walking in the woods.",
     ["A black bear walks through the forest.", "A brown bear in the woods.",
      "a large bear walking among trees", "The bear is searching for food.",
      "A grizzly bear on a trail."]),
    ("A computer monitor and keyboard on a desk.",
     ["A desktop computer with a monitor and keyboard.", "A desk with a computer screen.",
      "a keyboard and mouse in front of a monitor", "The computer is on a white desk.",
      "An office desk with a PC."]),
    ("A man throwing a frisbee in a park.",
     ["A man throws a frisbee at the park.", "A guy tossing a frisbee on the grass.",
      "a person about to throw a disc", "The man is playing frisbee.",
      "A young man throwing a frisbee to a dog."]),
    ("A sandwich and chips on a plate.",
     ["A sandwich with chips on a white plate.", "A plate with half a sandwich and fries.",
      "a turkey sandwich and potato chips", "The sandwich is cut in half.",
      "Lunch: a sandwich, chips and a pickle."]),
    ("A cow standing on a beach.",
     ["A cow standing on the sand near the ocean.", "A cow on a beach.",
      "a brown cow by the water", "The cow is walking along the shore.",
      "Cattle on a sandy beach."]),
]


# ---------------------------------------------------------------------------------------------
# Seed suite
# ---------------------------------------------------------------------------------------------

def ngram_counts(tokens, max_order):
    c = Counter()
    for order in range(1, max_order + 1):
        for i in range(0, len(tokens) - order + 1):
            c[tuple(tokens[i:i + order])] += 1
    return c


def nmt_bleu(ref_corpus, hyp_corpus, max_order):
    """tensorflow/nmt compute_bleu (smooth=False) as evaluate's nmt_bleu.py runs it,
    including evaluate's zero-length guard (ratio = bp = 0)."""
    matches = [0] * max_order
    possible = [0] * max_order
    ref_len = 0
    hyp_len = 0
    for refs, hyp in zip(ref_corpus, hyp_corpus):
        ref_len += min(len(r) for r in refs)
        hyp_len += len(hyp)
        merged = Counter()
        for r in refs:
            merged |= ngram_counts(r, max_order)
        overlap = ngram_counts(hyp, max_order) & merged
        for ng in overlap:
            matches[len(ng) - 1] += overlap[ng]
        for order in range(1, max_order + 1):
            p = len(hyp) - order + 1
            if p > 0:
                possible[order - 1] += p
    precisions = [0] * max_order
    for i in range(max_order):
        precisions[i] = float(matches[i]) / possible[i] if possible[i] > 0 else 0.0
    if min(precisions) > 0:
        geo_mean = math.exp(sum((1.0 / max_order) * math.log(p) for p in precisions))
    else:
        geo_mean = 0
    if ref_len == 0 or hyp_len == 0:
        bp = 0.0
    else:
        ratio = float(hyp_len) / ref_len
        bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo_mean * bp


def seed_suite(cands, refs):
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
    from nltk import word_tokenize
    from nltk.corpus import wordnet
    from nltk.translate import meteor_score as ms
    from rouge_score import rouge_scorer
    from pycocoevalcap.cider.cider import Cider

    tok13a = Tokenizer13a()
    t_refs = [[tok13a(r).split() for r in rs] for rs in refs]
    t_cands = [tok13a(c).split() for c in cands]
    corpus, per = {}, {}
    for n in range(1, 5):
        corpus[f"BLEU-{n}"] = nmt_bleu(t_refs, t_cands, n)
        per[f"BLEU-{n}"] = [nmt_bleu([r], [c], n) for r, c in zip(t_refs, t_cands)]

    met = [ms.meteor_score([word_tokenize(r) for r in rs], word_tokenize(c), wordnet=wordnet,
                           alpha=0.9, beta=3, gamma=0.5) for rs, c in zip(refs, cands)]
    per["METEOR"] = met
    corpus["METEOR"] = float(np.mean(met))

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rl = [scorer.score_multi(rs, c)["rougeL"].fmeasure for rs, c in zip(refs, cands)]
    per["ROUGE-L"] = rl
    corpus["ROUGE-L"] = float(np.mean(rl))

    gts = {i: [" ".join(r.split()) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(c.split())] for i, c in enumerate(cands)}
    score, scores = Cider().compute_score(gts, res)
    corpus["CIDEr"] = float(score)
    per["CIDEr"] = [float(x) for x in scores]
    return corpus, per


# ---------------------------------------------------------------------------------------------
# COCO suite
# ---------------------------------------------------------------------------------------------

def coco_suite(cands, refs):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": c}] for i, c in enumerate(cands)}
    tok = PTBTokenizer()
    with contextlib.redirect_stderr(io.StringIO()):
        gts_t = tok.tokenize(gts)
        res_t = tok.tokenize(res)
    corpus, per = {}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        b, bl = Bleu(4).compute_score(gts_t, res_t)
    for n in range(4):
        corpus[f"BLEU-{n + 1}"] = float(b[n])
        per[f"BLEU-{n + 1}"] = [float(x) for x in bl[n]]
    r, rl = Rouge().compute_score(gts_t, res_t)
    corpus["ROUGE-L"] = float(r)
    per["ROUGE-L"] = [float(x) for x in rl]
    c, cl = Cider().compute_score(gts_t, res_t)
    corpus["CIDEr"] = float(c)
    per["CIDEr"] = [float(x) for x in cl]
    tokens = {"cands": [res_t[i][0] for i in range(len(cands))],
              "refs": [gts_t[i] for i in range(len(refs))]}
    return corpus, per, tokens


def coco_meteor_jar(cands, refs, tokens):
    """pycocoevalcap's Meteor (Meteor 1.5 jar, -l en -norm, paraphrase table) on PTB output."""
    from pycocoevalcap.meteor.meteor import Meteor
    gts = {i: rs for i, rs in enumerate(tokens["refs"])}
    res = {i: [c] for i, c in enumerate(tokens["cands"])}
    m = Meteor()
    score, scores = m.compute_score(gts, res)
    return float(score), [float(x) for x in scores]


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--refs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--meteor-jar", action="store_true",
                    help="also run the Meteor 1.5 jar (coco METEOR) and store it")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    sets = {
        "generated": generate_corpus(args.seed, args.images, args.refs),
        # odd images drop the reference that resembles the candidate most (4 references)
        "realistic": ([c for c, _ in REALISTIC],
                      [r if i % 2 == 0 else r[1:] for i, (_, r) in enumerate(REALISTIC)]),
    }
    sets["random"] = generate_random_tokens(args.seed + 19, 400, args.refs)
    sets["unicode"] = generate_unicode(args.seed + 25, 600, args.refs)
    sets["sentences"] = generate_sentences(args.seed + 31, 500, args.refs)
    for name, (cands, refs) in sets.items():
        write_json(os.path.join(args.out, f"{name}_input.json"), {"cands": cands, "refs": refs})
        corpus, per = seed_suite(cands, refs)
        write_json(os.path.join(args.out, f"{name}_seed.json"), {"corpus": corpus, "per_image": per})
        print(name, "seed", json.dumps(corpus))
        corpus, per, tokens = coco_suite(cands, refs)
        out = {"corpus": corpus, "per_image": per, "ptb": tokens}
        if args.meteor_jar:
            s, ss = coco_meteor_jar(cands, refs, tokens)
            out["meteor_jar"] = {"corpus": s, "per_image": ss}
        write_json(os.path.join(args.out, f"{name}_coco.json"), out)
        print(name, "coco", json.dumps(corpus))


if __name__ == "__main__":
    main()
