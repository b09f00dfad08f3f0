"""Export a built corpus as one Parquet file per split, and push it to the Hub as a dataset repo.

    python -m dataset_scripts.export --corpus ktvic --data-dir data/ktvic --output-dir exports/ktvic \\
        [--split test] [--dedup-report reports/ktvic-test.json] [--push-to-hub USER/ktvic]

`<output-dir>/<split>.parquet` embeds the (RGB) image bytes; the Hub and
`datasets.load_dataset("parquet", data_dir=...)` recognise the split names from the file names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets

from .loading import CORPORA, add_corpus_option_argument, canonical_split, load_corpus


def export_corpus(
    name: str,
    data_dir,
    output_dir,
    split=None,
    *,
    push_to_hub=None,
    private=False,
    cache_dir=None,
    dedup_report=None,
    **options,
) -> dict:
    """Write `output_dir/<split>.parquet` for the split (or every split); push to the Hub repo
    `push_to_hub` when given. Returns {split: parquet path}."""
    corpus = load_corpus(name, data_dir, split, cache_dir=cache_dir, dedup_report=dedup_report, **options)
    if isinstance(corpus, datasets.Dataset):
        corpus = datasets.DatasetDict({canonical_split(split): corpus})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split_name, dataset in corpus.items():
        paths[split_name] = output_dir / f"{split_name}.parquet"
        dataset.to_parquet(str(paths[split_name]))
    if push_to_hub:
        corpus.push_to_hub(push_to_hub, private=private)
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m dataset_scripts.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=list(CORPORA), required=True)
    parser.add_argument("--data-dir", help="the corpus folder as downloaded (none for demo)")
    parser.add_argument("--split", help="one split (default: all)")
    add_corpus_option_argument(parser, "--option", "a corpus option, e.g. language=vi")
    parser.add_argument("--dedup-report", help="a report from dataset_scripts.dedupe to apply first")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="make a new Hub repo private")
    parser.add_argument("--cache-dir", help="cache for built corpora (default: the datasets cache)")
    args = parser.parse_args(argv)
    paths = export_corpus(
        args.corpus, args.data_dir, args.output_dir, args.split, push_to_hub=args.push_to_hub, private=args.private,
        cache_dir=args.cache_dir, dedup_report=args.dedup_report, **dict(args.option),
    )  # fmt: skip
    for split, path in paths.items():
        print(f"{split}: {path}")
    return paths


if __name__ == "__main__":
    from viclip_ot.cli import run

    run(main, prog="python -m dataset_scripts.export")
