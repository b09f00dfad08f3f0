"""The authors' converted format: any folder with `train.json`, `val.json`, `test.json`.

Each file: `{"images": [{"id", "image_path"}], "annotations": [{"id", "caption", "image_id"}]}`
with `image_path` relative to the folder. `val` is the `validation` split. Rows follow
`images`; captions follow `annotations`.
"""

from __future__ import annotations

from pathlib import Path

from ._common import CorpusBuilder, Entry, entries_from_coco_like, read_json


class JsonCorpus(CorpusBuilder):
    """`datasets` builder for the converted JSON format (splits train, validation, test: those present)."""

    CORPUS = "json"
    SPLIT_FILES = {"train": "train.json", "validation": "val.json", "test": "test.json"}

    def read_split(self, split: str, annotation_path: Path) -> list[Entry]:
        return entries_from_coco_like(
            read_json(annotation_path),
            annotation_path.name,
            image_root=Path(self.config.data_dir),
            file_key="image_path",
            caption_keys={"captions": "caption"},
        )
