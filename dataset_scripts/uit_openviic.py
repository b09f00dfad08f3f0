"""UIT-OpenViIC as downloaded: `uit-openviic-annotation-{train,dev,test}.json` and `images/`.

Each annotation file is one JSON object keyed by image file name (`"00000005095.jpg"`), each value
`{"captions": [str, ...]}`. The key is the row's `image_id`; rows follow the file's key order.
Images are looked up in `images/`, or next to the annotation files when there is no `images/`.
The dev file is the `validation` split. A few test JPEGs are truncated: they are decoded as far as
they go, with a warning naming them.
"""

from __future__ import annotations

from pathlib import Path

from ._common import CorpusBuilder, CorpusError, Entry, check_fields, read_json


def _is_object(parsed) -> bool:
    """Whether `parsed` (read with `object_pairs_hook=list`) was a JSON object."""
    return isinstance(parsed, list) and all(isinstance(pair, tuple) for pair in parsed)


class UitOpenviic(CorpusBuilder):
    """`datasets` builder for UIT-OpenViIC (splits train, validation, test)."""

    CORPUS = "uit-openviic"
    SPLIT_FILES = {
        "train": "uit-openviic-annotation-train.json",
        "validation": "uit-openviic-annotation-dev.json",
        "test": "uit-openviic-annotation-test.json",
    }
    KNOWN_SIZES = {"train": (9088, None), "validation": (2011, None), "test": (2001, None)}

    def read_split(self, split: str, annotation_path: Path) -> list[Entry]:
        pairs = read_json(annotation_path, object_pairs_hook=list)  # pairs keep duplicate keys visible
        if not _is_object(pairs) or not all(_is_object(value) for _, value in pairs):
            raise CorpusError(f"{annotation_path}: expected one JSON object mapping image file names to objects")
        names = [name for name, _ in pairs]
        values = [dict(value) for _, value in pairs]
        check_fields(values, {"captions": list[str]}, annotation_path.name, labels=names)
        image_dir = Path(self.config.data_dir) / "images"
        if not image_dir.is_dir():
            image_dir = image_dir.parent
        return [Entry(name, image_dir / name, value["captions"]) for name, value in zip(names, values)]
