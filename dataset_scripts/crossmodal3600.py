"""Crossmodal-3600 as downloaded: `captions.jsonl` (from `captions.zip`) and `images/<image/key>.jpg`.

One JSON line per image: `{"image/key": "<16 hex>", "image/locale": ..., "<lang>": {"caption": [...],
"caption/tokenized": [...], ...}, ...}` for 36 languages. The `language` option (default `vi`)
picks the captions; the only split is `test`; rows follow the file's lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import datasets

from ._common import CorpusBuilder, CorpusError, Entry, check_fields

LANGUAGES = (
    "ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu", "id", "it",
    "ja", "ko", "mi", "nl", "no", "pl", "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh",
)  # fmt: skip


@dataclass
class Crossmodal3600Config(datasets.BuilderConfig):
    """`language`: one of the 36 `LANGUAGES` codes."""

    language: str = "vi"

    def __post_init__(self):
        super().__post_init__()
        if self.language not in LANGUAGES:
            raise CorpusError(
                f"unknown Crossmodal-3600 language {self.language!r}; choose one of {', '.join(LANGUAGES)}"
            )


class Crossmodal3600(CorpusBuilder):
    """`datasets` builder for Crossmodal-3600 (split test; option `language`)."""

    BUILDER_CONFIG_CLASS = Crossmodal3600Config
    CORPUS = "crossmodal3600"
    SPLIT_FILES = {"test": "captions.jsonl"}

    def known_size(self, split: str):
        return (3600, 7350 if self.config.language == "vi" else None)

    def read_split(self, split: str, annotation_path: Path) -> list[Entry]:
        records = []
        with open(annotation_path, encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise CorpusError(f"{annotation_path} line {number} is not valid JSON: {error}") from None
        language = self.config.language
        check_fields(records, {"image/key": str, language: dict}, annotation_path.name)
        keys = [record["image/key"] for record in records]
        check_fields(
            [r[language] for r in records], {"caption": list[str]}, f"{annotation_path.name} {language!r}", keys
        )
        image_dir = Path(self.config.data_dir) / "images"
        return [Entry(key, image_dir / f"{key}.jpg", r[language]["caption"]) for key, r in zip(keys, records)]
