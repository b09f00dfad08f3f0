"""Near-duplicate reports: the JSON file `dataset_scripts.dedupe` writes and `load_corpus` applies.

A report names the target corpus and split and a fingerprint of its image ids, so it cannot be
applied to another corpus, split or a rebuilt split with other images.
"""

from __future__ import annotations

import hashlib
import json

import datasets

from viclip_ot.files import write_text

from ._common import CorpusError

FORMAT = "viclip-ot-dedupe-report/1"


def ids_fingerprint(image_ids) -> str:
    """SHA-256 of the image ids in row order."""
    return hashlib.sha256("\n".join(image_ids).encode()).hexdigest()


def write_report(report: dict, path) -> None:
    """Write `report` as JSON atomically (temporary file + rename): never a half-written file."""
    write_text(path, json.dumps(report, ensure_ascii=False, indent=1))


def read_report(path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise CorpusError(f"cannot read dedupe report {path}: {error}") from None
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise CorpusError(f"{path} is not a dedupe report (expected format {FORMAT!r})")
    return report


def apply_report(dataset: datasets.Dataset, report: dict, corpus: str, split: str) -> datasets.Dataset:
    """`dataset` (split `split` of `corpus`) without the images the report marks as near-duplicates."""
    target = report["target"]
    if (target["corpus"], target["split"]) != (corpus, split):
        raise CorpusError(f"the dedupe report is for {target['corpus']} {target['split']}, not {corpus} {split}")
    if target["ids_fingerprint"] != ids_fingerprint(dataset["image_id"]):
        raise CorpusError(
            f"the dedupe report for {corpus} {split} was made for other images "
            f"({target['images']} images then, {len(dataset)} now): run dataset_scripts.dedupe again"
        )
    removed = {entry["image_id"] for entry in report["removed"]}
    return dataset.filter(lambda ids: [i not in removed for i in ids], input_columns="image_id", batched=True)
