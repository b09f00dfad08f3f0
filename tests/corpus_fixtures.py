"""Writers of small corpus folders in each corpus's real layout, what a corpus stores, and a toy near-duplicate
descriptor; shared by the dataset, evaluation, image and study tests."""

import io
import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataset_scripts import LANGUAGES, CorpusWarning, load_corpus


def photo(seed: int, size=(48, 40)) -> Image.Image:
    """A smooth random RGB 'photo'; different seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((4, 5, 3)) * 255).astype(np.uint8))
    return coarse.resize(size, Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), encoding="utf-8")


UIT = {
    "train": {
        "00000000009.jpg": ["một con mèo", "con mèo nằm ngủ"],
        "00000000002.jpg": ["hai chiếc xe"],
        "00000000005.jpg": ["bầu trời xanh", "mây trắng", "trời đẹp"],
    },
    "dev": {"00000000011.jpg": ["người đi bộ"]},
    "test": {"00000000020.jpg": ["cây cầu"], "00000000021.jpg": ["con chó", "chó chạy"]},
}


def write_uit(root, truncate="00000000021.jpg") -> dict:
    """UIT-OpenViIC layout; returns {file name: bytes written}."""
    files = {}
    for split, entries in UIT.items():
        write(
            root / f"uit-openviic-annotation-{split}.json", {name: {"captions": caps} for name, caps in entries.items()}
        )
        for name in entries:
            data = encode(photo(int(name[:-4])), "JPEG", quality=90)
            files[name] = data[: len(data) * 2 // 3] if name == truncate else data
            write(root / "images" / name, files[name])
    return files


KTVIC_TEST = {
    "images": [
        {"id": 361, "filename": "00000000361.jpeg"},
        {"id": 1, "filename": "00000000001.jpg"},
        {"id": 452, "filename": "00000000452.png"},
    ],
    "annotations": [
        {
            "id": 0,
            "image_id": 1,
            "caption": "đây là khung cảnh trước một căn nhà",
            "segment_caption": "đây là khung_cảnh trước một căn nhà",
        },
        {"id": 1, "image_id": 361, "caption": "một chiếc xe máy", "segment_caption": "một chiếc xe_máy"},
        {"id": 2, "image_id": 1, "caption": "căn nhà cao tầng", "segment_caption": "căn nhà cao_tầng"},
        {"id": 3, "image_id": 452, "caption": "bức tranh", "segment_caption": "bức tranh"},
    ],
}
KTVIC_TRAIN = {
    "images": [{"id": 7, "filename": "00000000007.jpg"}],
    "annotations": [{"id": 0, "image_id": 7, "caption": "cánh đồng lúa", "segment_caption": "cánh_đồng lúa"}],
}


def write_ktvic(root, test=KTVIC_TEST, images=None) -> dict:
    """KTVIC layout; `images` maps test file names to bytes (default: a photo for each of KTVIC_TEST's)."""
    write(root / "train_data.json", KTVIC_TRAIN)
    write(root / "test_data.json", test)
    write(root / "train-images" / "00000000007.jpg", encode(photo(7), "JPEG"))
    images = images or {
        im["filename"]: encode(photo(im["id"]), "PNG" if im["filename"].endswith("png") else "JPEG")
        for im in KTVIC_TEST["images"]
    }
    for name, data in images.items():
        write(root / "public-test-images" / name, data)
    return images


def write_crossmodal(root) -> None:
    """Crossmodal-3600 layout: three images with one or two captions in each of the 36 languages."""
    lines = []
    for i, key in enumerate(["0123456789abcdef", "fedcba9876543210", "00000000000000aa"]):
        record = {"image/key": key, "image/locale": "vi"}
        for language in LANGUAGES:
            captions = [f"{language} caption {i}.{j}" for j in range(1 + i % 2)]
            record[language] = {
                "caption": captions,
                "caption/tokenized": captions,
                "caption/tokenized/lowercase": captions,
            }
        record["vi"]["caption"] = [f"ảnh số {i}", f"bức ảnh thứ {i}"][: 1 + i % 2]
        lines.append(json.dumps(record, ensure_ascii=False))
        write(root / "images" / f"{key}.jpg", encode(photo(100 + i), "JPEG"))
    write(root / "captions.jsonl", "\n".join(lines) + "\n")


def write_json_corpus(root) -> None:
    """The authors' converted format: images 5, 3 (train), 8 (val), 9 (test), two captions each."""
    for split, ids in (("train", [5, 3]), ("val", [8]), ("test", [9])):
        images = [{"id": i, "image_path": f"images/{split}/{i}.png"} for i in ids]
        annotations = [
            {"id": 10 * i + j, "caption": f"chú thích {i}-{j}", "image_id": i} for i in ids for j in range(2)
        ]
        write(root / f"{split}.json", {"images": images, "annotations": annotations})
        for i in ids:
            write(root / "images" / split / f"{i}.png", encode(photo(i), "PNG"))


def raw_bytes(dataset: datasets.Dataset) -> list[bytes]:
    """The encoded image bytes a built corpus stores, row by row."""
    return [row["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


def stored_image(path, root) -> tuple[bytes, bool]:
    """What the corpus builders store for the image file `path`: its bytes in a one-image `json` corpus built under
    `root`, and whether the build warned that the file was truncated."""
    path, root = Path(path), Path(root)
    write(root / "corpus" / "images" / path.name, path.read_bytes())
    annotations = {"images": [{"id": 0, "image_path": f"images/{path.name}"}], "annotations": []}
    annotations["annotations"].append({"id": 0, "caption": "một bức ảnh", "image_id": 0})
    write(root / "corpus" / "test.json", annotations)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorpusWarning)
        corpus = load_corpus("json", root / "corpus", split="test", cache_dir=str(root / "cache"))
    truncated = any(issubclass(w.category, CorpusWarning) and "truncated" in str(w.message) for w in caught)
    (data,) = raw_bytes(corpus)
    return data, truncated


class Thumbnail(torch.nn.Module):
    """A toy near-duplicate descriptor in SSCD's TorchScript form: the mean-centred 8x8 thumbnail, L2-normalised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thumb = F.adaptive_avg_pool2d(x, 8)
        return F.normalize((thumb - thumb.mean(dim=(2, 3), keepdim=True)).flatten(1), dim=1)
