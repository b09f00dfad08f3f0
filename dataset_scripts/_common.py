"""Shared pieces of the corpus builders: row schema, annotation checks, RGB image bytes, cache fingerprints.

Every corpus yields one row per image: `image` (`datasets.Image`), `image_id` (str) and
`captions` (list of str, in annotation order). Images are converted to RGB **when the corpus is
built**: a file that is already a complete upright RGB JPEG or PNG is stored byte for byte, anything else
(an EXIF orientation, palette, transparency, grayscale, 16-bit, CMYK, a truncated JPEG, other formats such as
HEIC) is converted by `processing_viclip_ot.to_rgb`, the converter inference uses (turned upright, transparent
pixels white), and stored as lossless PNG. The `image` column therefore always
decodes to an RGB `PIL.Image` and the built corpus does not need the source folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import typing
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image, ImageFile

from processing_viclip_ot import is_upright_rgb, to_rgb

SHOWN = 5  # how many offending items an error or warning lists


class CorpusError(ValueError):
    """A corpus folder or option that cannot be read as promised."""


class CorpusWarning(UserWarning):
    """Something in a corpus was repaired, skipped or differs from the published corpus."""


def first_few(items) -> str:
    """`'a, b, c, ... (7 in all)'`: the first few items of a list, for messages."""
    items = [str(item) for item in items]
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > SHOWN else "")


def corpus_features(*extra_caption_columns: str) -> datasets.Features:
    """The row schema; `extra_caption_columns` are further list-of-str columns (KTVIC's `segment_captions`)."""
    texts = datasets.List(datasets.Value("string"))
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "captions": texts,
            **{name: texts for name in extra_caption_columns},
        }
    )


@dataclass
class Entry:
    """One image of a split as the annotation file describes it."""

    image_id: str
    path: Path
    captions: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)


def read_json(path: Path, object_pairs_hook=None):
    """Parse a JSON annotation file; a malformed file is a `CorpusError` naming it."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file, object_pairs_hook=object_pairs_hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path} is not valid UTF-8 JSON: {error}") from None


def _matches(value, expected) -> bool:
    if typing.get_origin(expected) is list:  # list[str]
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(isinstance(v, item) for v in value)
    return isinstance(value, expected)


def check_fields(records, fields: dict, where: str, labels=None) -> None:
    """Raise one `CorpusError` per missing or mistyped key among `records` (a list of dicts).

    `fields` maps each required key to its type(s) (`str`, `(int, str)`, `list[str]`);
    `where` names the list and `labels` the records (default: their positions) in messages.
    """
    if not isinstance(records, list):
        raise CorpusError(f"{where}: expected a list, found {type(records).__name__}")
    labels = labels or list(range(len(records)))
    for key, expected in fields.items():
        bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or not _matches(r.get(key), expected)]
        if bad:
            example = records[bad[0]]
            found = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise CorpusError(
                f"{where}: {len(bad)} of {len(records)} entries lack key {key!r} or give it a wrong type "
                f"(entries {first_few(labels[i] for i in bad)}; entry {labels[bad[0]]} has keys {found})"
            )


def entries_from_coco_like(data, where: str, image_root: Path, file_key: str, caption_keys: dict) -> list[Entry]:
    """Rows of a `{"images": [{"id", file_key}], "annotations": [{"image_id", ...}]}` file.

    `caption_keys` maps each row column to its annotation key, `captions` first
    (`{"captions": "caption", "segment_captions": "segment_caption"}`). Captions keep the order of
    `annotations`; rows keep the order of `images`.
    """
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise CorpusError(f"{where}: expected lists under keys 'images' and 'annotations', found {found}")
    images, annotations = data["images"], data["annotations"]
    check_fields(images, {"id": (int, str), file_key: str}, f"{where} 'images'")
    check_fields(
        annotations, {"image_id": (int, str), **{k: str for k in caption_keys.values()}}, f"{where} 'annotations'"
    )
    texts = {str(image["id"]): {column: [] for column in caption_keys} for image in images}
    unknown = [a["image_id"] for a in annotations if str(a["image_id"]) not in texts]
    if unknown:
        raise CorpusError(
            f"{where}: {len(unknown)} annotations refer to image ids missing from 'images': "
            f"{first_few(dict.fromkeys(unknown))}"
        )
    for annotation in annotations:
        for column, key in caption_keys.items():
            texts[str(annotation["image_id"])][column].append(annotation[key])
    entries = []
    for image in images:
        columns = dict(texts[str(image["id"])])
        captions = columns.pop("captions")
        entries.append(Entry(str(image["id"]), image_root / image[file_key], captions, columns))
    return entries


def check_entries(entries: list[Entry], where: str) -> None:
    """One `CorpusError` for no images, duplicate image ids, images without captions or missing image files."""
    if not entries:
        raise CorpusError(f"{where}: no images")
    duplicates = [image_id for image_id, n in Counter(e.image_id for e in entries).items() if n > 1]
    if duplicates:
        raise CorpusError(f"{where}: {len(duplicates)} duplicate image ids: {first_few(duplicates)}")
    uncaptioned = [e.image_id for e in entries if not e.captions]
    if uncaptioned:
        raise CorpusError(f"{where}: {len(uncaptioned)} images without captions: {first_few(uncaptioned)}")
    missing = [str(e.path) for e in entries if not e.path.is_file()]
    if missing:
        raise CorpusError(f"{where}: {len(missing)} of {len(entries)} image files are missing: {first_few(missing)}")


def warn_size_mismatch(corpus: str, split: str, known: tuple, entries: list[Entry]) -> None:
    """Warn when a split's image (and, where known, caption) count differs from the published one."""
    images, captions = len(entries), sum(len(e.captions) for e in entries)
    known_images, known_captions = known
    if images != known_images or (known_captions is not None and captions != known_captions):
        published = f"{known_images} images" + (f" / {known_captions} captions" if known_captions else "")
        message = f"{corpus} {split}: found {images} images / {captions} captions, the published split has {published}"
        warnings.warn(message, CorpusWarning, stacklevel=2)


def _decode(raw: bytes, allow_truncated: bool) -> Image.Image:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allow_truncated
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
        return image
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_image_bytes(path: Path) -> tuple[bytes, bool]:
    """Encoded bytes of the file's image in RGB and whether it was truncated (decoded as far as it goes).

    Raises `OSError` when PIL cannot decode the file at all.
    """
    raw = path.read_bytes()
    try:
        image, truncated = _decode(raw, allow_truncated=False), False
    except OSError:
        image, truncated = _decode(raw, allow_truncated=True), True
    if not truncated and image.format in ("JPEG", "PNG") and is_upright_rgb(image):
        return raw, False
    return png_bytes(to_rgb(image)), truncated


def source_fingerprint(data_dir: str) -> str:
    """Hash of every (non-hidden) file's relative path, size and mtime under `data_dir`.

    Used as the builder cache's `hash`: any added, removed or changed file means a fresh build.
    """
    if not os.path.isdir(data_dir):
        raise CorpusError(f"data_dir {data_dir} is not a folder")
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = os.path.join(root, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, data_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class CorpusBuilder(datasets.GeneratorBasedBuilder):
    """Base of the folder corpora: reads `data_dir` as the user downloaded it.

    Subclasses set `SPLIT_FILES` (split -> annotation file relative to `data_dir`), optionally
    `KNOWN_SIZES` (split -> (images, captions or None)) and `EXTRA_COLUMNS`, and implement
    `read_split(split, annotation_path) -> list[Entry]`. Only the splits whose annotation file
    exists are built. The cache is keyed by the files' paths, sizes and mtimes, so a changed
    folder is rebuilt rather than served stale.
    """

    VERSION = datasets.Version("1.0.0")  # bump when the rows built from the same files change
    CORPUS = ""
    SPLIT_FILES: dict[str, str] = {}
    KNOWN_SIZES: dict[str, tuple] = {}
    EXTRA_COLUMNS: tuple[str, ...] = ()

    def __init__(self, *args, data_dir: str | None = None, **kwargs):
        if data_dir is None:
            raise CorpusError(f"corpus {self.CORPUS!r} needs data_dir: the folder you downloaded")
        data_dir = os.path.abspath(data_dir)
        kwargs.setdefault("hash", source_fingerprint(data_dir))
        super().__init__(*args, data_dir=data_dir, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(features=corpus_features(*self.EXTRA_COLUMNS))

    def read_split(self, split: str, annotation_path: Path) -> list[Entry]:
        raise NotImplementedError

    def known_size(self, split: str):
        return self.KNOWN_SIZES.get(split)

    def _split_generators(self, dl_manager):
        data_dir = Path(self.config.data_dir)
        present = {split: data_dir / name for split, name in self.SPLIT_FILES.items() if (data_dir / name).is_file()}
        if not present:
            raise CorpusError(
                f"{data_dir} holds none of the {self.CORPUS} annotation files {list(self.SPLIT_FILES.values())}"
            )
        generators = []
        for split, annotation_path in present.items():
            entries = self.read_split(split, annotation_path)
            where = f"{self.CORPUS} {split} ({annotation_path})"
            check_entries(entries, where)
            if self.known_size(split):
                warn_size_mismatch(self.CORPUS, split, self.known_size(split), entries)
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"entries": entries, "where": where}))
        return generators

    def _generate_examples(self, entries: list[Entry], where: str):
        truncated, unreadable = [], []
        for index, entry in enumerate(entries):
            try:
                data, was_truncated = rgb_image_bytes(entry.path)
            except OSError as error:
                unreadable.append(f"{entry.path.name} ({error})")
                continue
            if was_truncated:
                truncated.append(entry.path.name)
            yield (
                index,
                {
                    "image": {"bytes": data, "path": None},
                    "image_id": entry.image_id,
                    "captions": entry.captions,
                    **entry.extra,
                },
            )
        if truncated:
            warnings.warn(
                f"{where}: {len(truncated)} truncated images decoded as far as they go: {first_few(truncated)}",
                CorpusWarning,
                stacklevel=2,
            )
        if unreadable:
            warnings.warn(
                f"{where}: {len(unreadable)} unreadable images skipped: {first_few(unreadable)}",
                CorpusWarning,
                stacklevel=2,
            )
