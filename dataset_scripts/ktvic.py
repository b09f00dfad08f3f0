"""KTVIC as downloaded: `train_data.json` + `train-images/`, `test_data.json` + `public-test-images/`.

Annotation files: `{"images": [{"id": int, "filename": str}], "annotations": [{"id", "image_id",
"caption", "segment_caption"}]}` (`filename`, not COCO's `file_name`; extensions .jpg, .jpeg,
.png). Rows follow `images`; `image_id` is the image's `id` as a string; `captions` and the
word-segmented `segment_captions` (`khung_cảnh`) follow `annotations`.
"""

from __future__ import annotations

from pathlib import Path

from ._common import CorpusBuilder, Entry, entries_from_coco_like, read_json


class Ktvic(CorpusBuilder):
    """`datasets` builder for KTVIC (splits train, test)."""

    CORPUS = "ktvic"
    SPLIT_FILES = {"train": "train_data.json", "test": "test_data.json"}
    IMAGE_DIRS = {"train": "train-images", "test": "public-test-images"}
    KNOWN_SIZES = {"train": (3769, 18845), "test": (558, 2790)}
    EXTRA_COLUMNS = ("segment_captions",)

    def read_split(self, split: str, annotation_path: Path) -> list[Entry]:
        return entries_from_coco_like(
            read_json(annotation_path),
            annotation_path.name,
            image_root=Path(self.config.data_dir) / self.IMAGE_DIRS[split],
            file_key="filename",
            caption_keys={"captions": "caption", "segment_captions": "segment_caption"},
        )
