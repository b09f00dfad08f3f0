"""`load_corpus`: the one door through which training and evaluation read every corpus."""

from __future__ import annotations

import argparse
import dataclasses

import datasets

from ._common import CorpusError
from .crossmodal3600 import Crossmodal3600
from .demo import Demo
from .json_corpus import JsonCorpus
from .ktvic import Ktvic
from .report import apply_report, read_report
from .uit_openviic import UitOpenviic

CORPORA = {
    "uit-openviic": UitOpenviic,
    "ktvic": Ktvic,
    "crossmodal3600": Crossmodal3600,
    "json": JsonCorpus,
    "demo": Demo,
}
SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


def canonical_split(split: str | None) -> str | None:
    """`dev`, `val` and `valid` mean `validation`."""
    return SPLIT_ALIASES.get(split, split)


def parse_option(text: str) -> tuple[str, object]:
    """argparse type for a `KEY=VALUE` corpus option; integer values become ints."""
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, int(value) if value.lstrip("-").isdigit() else value


def add_corpus_option_argument(parser, flag="--option", help="a corpus option, e.g. language=vi"):
    """Add the repeatable `flag KEY=VALUE` corpus option to `parser` (a list of (key, value) pairs)."""
    parser.add_argument(flag, type=parse_option, action="append", default=[], metavar="KEY=VALUE", help=help)


def corpus_options(name: str) -> list[str]:
    """The `**options` a corpus takes (fields of its builder config beyond `datasets.BuilderConfig`)."""
    base = {field.name for field in dataclasses.fields(datasets.BuilderConfig)}
    return [f.name for f in dataclasses.fields(CORPORA[name].BUILDER_CONFIG_CLASS) if f.name not in base]


def prepare_builder(name: str, data_dir=None, *, cache_dir=None, **options) -> datasets.DatasetBuilder:
    """The corpus's builder with its splits built (or found in the cache)."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    unknown = sorted(set(options) - set(corpus_options(name)))
    if unknown:
        raise CorpusError(
            f"corpus {name!r} takes no option {', '.join(unknown)}; its options: {corpus_options(name) or 'none'}"
        )
    location = {} if data_dir is None else {"data_dir": str(data_dir)}
    builder = CORPORA[name](cache_dir=None if cache_dir is None else str(cache_dir), **location, **options)
    builder.download_and_prepare()
    return builder


def load_corpus(name: str, data_dir=None, split: str | None = None, *, cache_dir=None, dedup_report=None, **options):
    """Read a corpus as one row per image: `image` (RGB), `image_id` (str), `captions` (list of str).

    Args:
        name: `uit-openviic`, `ktvic`, `crossmodal3600`, `json` or `demo`.
        data_dir: the folder as downloaded (`None` for `demo`).
        split: `train`, `validation` (aliases `dev`, `val`) or `test`; `None` for all built splits.
        cache_dir: where built corpora are cached (default: the `datasets` cache).
        dedup_report: a report from `python -m dataset_scripts.dedupe`; its images are removed
            from the split it was made for.
        **options: corpus options: `language` (crossmodal3600), `train_size`, `validation_size`,
            `test_size`, `image_size`, `seed` (demo).

    Returns a `datasets.Dataset` for one split, else a `datasets.DatasetDict`.
    """
    builder = prepare_builder(name, data_dir, cache_dir=cache_dir, **options)
    split = canonical_split(split)
    available = list(builder.info.splits)
    if split is not None and split not in available:
        raise CorpusError(f"{name} has no split {split!r} in {data_dir}; available: {', '.join(available)}")
    corpus = builder.as_dataset(split=split)
    if dedup_report is not None:
        report = read_report(dedup_report)
        if split is not None:
            return apply_report(corpus, report, name, split)
        target = report["target"]["split"]
        if target not in corpus:
            raise CorpusError(f"the dedupe report is for split {target!r}, which {name} in {data_dir} does not have")
        corpus[target] = apply_report(corpus[target], report, name, target)
    return corpus
