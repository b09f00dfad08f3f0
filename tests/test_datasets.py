"""Corpus builders, load_corpus, near-duplicate removal, export and the demo corpus, on fixture folders
in each corpus's real layout written by `corpus_fixtures` (offline; nothing outside tmp dirs is read)."""

import io
import json
import os
import unicodedata

import datasets
import numpy as np
import pytest
import torch
from corpus_fixtures import (
    KTVIC_TEST,
    UIT,
    Thumbnail,
    encode,
    photo,
    raw_bytes,
    write,
    write_crossmodal,
    write_json_corpus,
    write_ktvic,
    write_uit,
)
from PIL import Image, ImageFile

from dataset_scripts import LANGUAGES, CorpusError, CorpusWarning, Crossmodal3600, dedupe, demo, export, load_corpus
from dataset_scripts.demo import make_scene
from dataset_scripts.report import read_report

pytestmark = pytest.mark.filterwarnings("ignore::dataset_scripts.CorpusWarning")


# ---------------------------------------------------------------- builders


def test_uit_openviic_rows_truncated_jpeg_and_known_sizes(tmp_path):
    files = write_uit(tmp_path / "uit")
    with pytest.warns(CorpusWarning) as caught:
        corpus = load_corpus("uit-openviic", tmp_path / "uit", cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in caught]
    assert any("1 truncated images decoded as far as they go: 00000000021.jpg" in m for m in messages)
    assert any(
        "uit-openviic train: found 3 images / 6 captions, the published split has 9088 images" in m for m in messages
    )
    assert any(
        "uit-openviic validation: found 1 images / 1 captions, the published split has 2011 images" in m
        for m in messages
    )

    assert list(corpus) == ["train", "validation", "test"]
    for split, source in (("train", "train"), ("validation", "dev"), ("test", "test")):
        assert corpus[split]["image_id"] == list(UIT[source])  # file order, not sorted
        assert corpus[split]["captions"] == list(UIT[source].values())
    # complete RGB JPEGs are stored byte for byte; the truncated one is decoded as far as it goes
    stored = dict(zip(corpus["test"]["image_id"], raw_bytes(corpus["test"])))
    assert stored["00000000020.jpg"] == files["00000000020.jpg"]
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        expected = Image.open(io.BytesIO(files["00000000021.jpg"])).convert("RGB")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    image = corpus["test"][1]["image"]
    assert image.mode == "RGB" and image.size == (48, 40)
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_ktvic_rows_extensions_and_rgb_conversion(tmp_path):
    base = photo(3)
    transparent = base.convert("RGBA")
    transparent.putalpha(
        Image.fromarray(np.tile(np.repeat(np.array([0, 255], np.uint8), 24), (40, 1)))
    )  # left half clear
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    images = {
        "00000000361.jpeg": encode(base.convert("CMYK"), "JPEG", quality=95),
        "00000000001.jpg": encode(base.convert("L"), "JPEG", quality=95),
        "00000000452.png": encode(palette, "PNG"),
        "00000004143.png": encode(transparent, "PNG"),
    }
    test = {
        "images": KTVIC_TEST["images"] + [{"id": 4143, "filename": "00000004143.png"}],
        "annotations": KTVIC_TEST["annotations"]
        + [{"id": 4, "image_id": 4143, "caption": "trong suốt", "segment_caption": "trong_suốt"}],
    }
    write_ktvic(tmp_path / "ktvic", test=test, images=images)
    with pytest.warns(
        CorpusWarning,
        match="ktvic test: found 4 images / 5 captions, the published split has 558 images / 2790 captions",
    ):
        corpus = load_corpus("ktvic", tmp_path / "ktvic", cache_dir=tmp_path / "cache")
    test = corpus["test"]

    assert test["image_id"] == ["361", "1", "452", "4143"]
    assert test["captions"] == [
        ["một chiếc xe máy"],
        ["đây là khung cảnh trước một căn nhà", "căn nhà cao tầng"],
        ["bức tranh"],
        ["trong suốt"],
    ]
    assert test["segment_captions"] == [
        ["một chiếc xe_máy"],
        ["đây là khung_cảnh trước một căn nhà", "căn nhà cao_tầng"],
        ["bức tranh"],
        ["trong_suốt"],
    ]
    decoded = [row["image"] for row in test]
    assert all(image.mode == "RGB" and image.size == (48, 40) for image in decoded)
    cmyk, gray, paletted, clear = (np.asarray(image).astype(int) for image in decoded)
    assert np.abs(cmyk - np.asarray(base)).mean() < 8  # CMYK -> RGB keeps the colours
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.array_equal(paletted, np.asarray(palette.convert("RGB")))
    assert (clear[:, :24] == 255).all()  # transparent pixels become white
    assert np.array_equal(clear[:, 24:], np.asarray(base)[:, 24:])
    assert corpus["train"]["image_id"] == ["7"]
    assert corpus["train"]["captions"] == [["cánh đồng lúa"]] and corpus["train"]["segment_captions"] == [
        ["cánh_đồng lúa"]
    ]


def test_crossmodal3600_languages(tmp_path):
    write_crossmodal(tmp_path / "xm")
    with pytest.warns(
        CorpusWarning,
        match="crossmodal3600 test: found 3 images / 4 captions, the published split has 3600 images / 7350 captions",
    ):
        vi = load_corpus("crossmodal3600", tmp_path / "xm", "test", cache_dir=tmp_path / "cache")
    assert vi["image_id"] == ["0123456789abcdef", "fedcba9876543210", "00000000000000aa"]
    assert vi["captions"] == [["ảnh số 0"], ["ảnh số 1", "bức ảnh thứ 1"], ["ảnh số 2"]]
    builder = Crossmodal3600(
        data_dir=str(tmp_path / "xm"), cache_dir=str(tmp_path / "cache"), language="fil"
    )  # by import
    builder.download_and_prepare()
    fil = builder.as_dataset("test")
    assert fil["captions"] == [["fil caption 0.0"], ["fil caption 1.0", "fil caption 1.1"], ["fil caption 2.0"]]
    with pytest.raises(CorpusError, match="unknown Crossmodal-3600 language 'xx'; choose one of ar, bn, .* zh"):
        load_corpus("crossmodal3600", tmp_path / "xm", cache_dir=tmp_path / "cache", language="xx")
    assert len(LANGUAGES) == 36


def test_json_format_and_split_aliases(tmp_path):
    root = tmp_path / "converted"
    write_json_corpus(root)
    corpus = load_corpus("json", root, cache_dir=tmp_path / "cache")
    assert {split: corpus[split]["image_id"] for split in corpus} == {
        "train": ["5", "3"],
        "validation": ["8"],
        "test": ["9"],
    }
    assert corpus["train"]["captions"] == [["chú thích 5-0", "chú thích 5-1"], ["chú thích 3-0", "chú thích 3-1"]]
    for alias in ("val", "dev", "validation"):
        assert load_corpus("json", root, alias, cache_dir=tmp_path / "cache")["image_id"] == ["8"]
    assert np.array_equal(np.asarray(corpus["test"][0]["image"]), np.asarray(photo(9)))


# ---------------------------------------------------------------- bad input


def bad_uit(root, change):
    write_uit(root, truncate=None)
    change(root)


BAD_INPUTS = {
    "missing images": (
        lambda root: (
            write_ktvic(root),
            os.remove(root / "public-test-images" / "00000000001.jpg"),
            os.remove(root / "public-test-images" / "00000000452.png"),
        ),
        "ktvic",
        r"ktvic test .*: 2 of 3 image files are missing: .*00000000001\.jpg, .*00000000452\.png",
    ),
    "malformed KTVIC key": (
        lambda root: write_ktvic(
            root,
            test={**KTVIC_TEST, "images": [{"id": 1, "file_name": "00000000001.jpg"}, {"id": 2, "file_name": "x.jpg"}]},
        ),
        "ktvic",
        r"test_data.json 'images': 2 of 2 entries lack key 'filename' .*entry 0 has keys \['file_name', 'id'\]",
    ),
    "malformed UIT captions": (
        lambda root: bad_uit(
            root, lambda r: write(r / "uit-openviic-annotation-test.json", {"00000000020.jpg": {"caption": ["x"]}})
        ),
        "uit-openviic",
        r"uit-openviic-annotation-test.json: 1 of 1 entries lack key 'captions' .*entries 00000000020.jpg",
    ),
    "invalid JSON": (
        lambda root: bad_uit(
            root, lambda r: write(r / "uit-openviic-annotation-dev.json", '{"a.jpg": {"captions": [}')
        ),
        "uit-openviic",
        r"uit-openviic-annotation-dev.json is not valid UTF-8 JSON",
    ),
    "image without captions": (
        lambda root: write_ktvic(root, test={**KTVIC_TEST, "annotations": KTVIC_TEST["annotations"][:3]}),
        "ktvic",
        r"ktvic test .*: 1 images without captions: 452",
    ),
    "duplicate UIT ids": (
        lambda root: bad_uit(
            root,
            lambda r: write(
                r / "uit-openviic-annotation-train.json",
                '{"00000000009.jpg": {"captions": ["a"]}, "00000000002.jpg": {"captions": ["b"]}, '
                '"00000000009.jpg": {"captions": ["c"]}}',
            ),
        ),
        "uit-openviic",
        r"uit-openviic train .*: 1 duplicate image ids: 00000000009.jpg",
    ),
    "duplicate KTVIC ids": (
        lambda root: write_ktvic(root, test={**KTVIC_TEST, "images": KTVIC_TEST["images"] + KTVIC_TEST["images"][:2]}),
        "ktvic",
        r"ktvic test .*: 2 duplicate image ids: 361, 1",
    ),
    "annotation for an unknown image": (
        lambda root: write_ktvic(
            root,
            test={
                **KTVIC_TEST,
                "annotations": KTVIC_TEST["annotations"] + [{**KTVIC_TEST["annotations"][0], "image_id": 99}],
            },
        ),
        "ktvic",
        r"test_data.json: 1 annotations refer to image ids missing from 'images': 99",
    ),
    "no annotation files": (lambda root: root.mkdir(), "ktvic", r"holds none of the ktvic annotation files"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_error(tmp_path, case):
    make, corpus, message = BAD_INPUTS[case]
    make(tmp_path / "data")
    with pytest.raises(CorpusError, match=message):
        load_corpus(corpus, tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.arrow"))  # nothing half-built is left to be served


def test_unreadable_image_is_skipped_with_a_counted_warning(tmp_path):
    write_ktvic(tmp_path / "ktvic")
    write(tmp_path / "ktvic" / "public-test-images" / "00000000001.jpg", b"not an image")
    with pytest.warns(CorpusWarning, match=r"1 unreadable images skipped: 00000000001.jpg"):
        test = load_corpus("ktvic", tmp_path / "ktvic", "test", cache_dir=tmp_path / "cache")
    assert test["image_id"] == ["361", "452"]


def test_load_corpus_argument_errors(tmp_path):
    write_ktvic(tmp_path / "ktvic")
    with pytest.raises(CorpusError, match="unknown corpus 'coco'"):
        load_corpus("coco", tmp_path / "ktvic")
    with pytest.raises(CorpusError, match="corpus 'ktvic' takes no option language"):
        load_corpus("ktvic", tmp_path / "ktvic", language="vi")
    with pytest.raises(CorpusError, match="ktvic has no split 'validation' .*available: train, test"):
        load_corpus("ktvic", tmp_path / "ktvic", "dev", cache_dir=tmp_path / "cache")
    with pytest.raises(CorpusError, match="corpus 'ktvic' needs data_dir"):
        load_corpus("ktvic")
    with pytest.raises(CorpusError, match="pass no data_dir"):
        load_corpus("demo", tmp_path / "ktvic", cache_dir=tmp_path / "cache")


def test_stale_cache_is_rebuilt_after_files_change(tmp_path):
    root, cache = tmp_path / "ktvic", tmp_path / "cache"
    write_ktvic(root)
    first = load_corpus("ktvic", root, "test", cache_dir=cache)
    assert load_corpus("ktvic", root, "test", cache_dir=cache).cache_files == first.cache_files  # unchanged: cached
    changed = json.loads(json.dumps(KTVIC_TEST))
    changed["annotations"][1]["caption"] = "một chiếc xe máy màu đỏ đang đỗ"
    write(root / "test_data.json", changed)
    write(root / "public-test-images" / "00000000452.png", encode(photo(999), "PNG"))
    second = load_corpus("ktvic", root, "test", cache_dir=cache)
    assert second["captions"][0] == ["một chiếc xe máy màu đỏ đang đỗ"]
    assert np.array_equal(np.asarray(second[2]["image"]), np.asarray(photo(999)))


# ---------------------------------------------------------------- near-duplicate removal


def test_best_matches_in_chunks_equals_the_full_matrix():
    rng = np.random.default_rng(0)
    target, reference = (rng.standard_normal((n, 16)).astype(np.float32) for n in (23, 31))
    full = target @ reference.T
    for chunk_size in (1, 5, 100):
        index, similarity = dedupe.best_matches(target, reference, chunk_size)
        assert np.array_equal(index, full.argmax(1)) and np.allclose(similarity, full.max(1), atol=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_dedupe_finds_copies_and_load_corpus_removes_them(tmp_path):
    write_uit(tmp_path / "uit", truncate=None)  # reference: UIT train (00000000009, 00000000002, 00000000005)
    originals = {name: photo(int(name[:-4])) for name in UIT["train"]}
    jittered = np.asarray(originals["00000000005.jpg"]).astype(int) * 1.08 + np.random.default_rng(1).integers(
        -6, 7, (40, 48, 3)
    )
    test = {
        "images": [
            {"id": i, "filename": f"{i:011d}.{ext}"}
            for i, ext in ((10, "jpg"), (11, "png"), (12, "jpeg"), (13, "jpg"), (14, "jpg"), (15, "png"))
        ],
        "annotations": [
            {"id": 2 * i + j, "image_id": i, "caption": f"ảnh {i} câu {j}", "segment_caption": f"ảnh {i} câu_{j}"}
            for i in range(10, 16)
            for j in range(2)
        ],
    }
    images = {
        "00000000010.jpg": encode(originals["00000000009.jpg"], "JPEG", quality=40),  # re-encoded
        "00000000011.png": encode(originals["00000000002.jpg"].resize((96, 80)), "PNG"),  # resized
        "00000000012.jpeg": encode(Image.fromarray(np.clip(jittered, 0, 255).astype(np.uint8)), "JPEG"),  # jittered
        "00000000013.jpg": encode(photo(13), "JPEG"),  # distinct images
        "00000000014.jpg": encode(photo(14), "JPEG"),
        "00000000015.png": encode(photo(15), "PNG"),
    }
    write_ktvic(tmp_path / "ktvic", test=test, images=images)
    model = tmp_path / "thumbnail.torchscript.pt"
    torch.jit.script(Thumbnail()).save(str(model))
    options = {
        "reference-dir": tmp_path / "uit", "target-corpus": "ktvic", "target-dir": tmp_path / "ktvic",
        "target-split": "test", "model": model, "image-size": 64, "output": tmp_path / "report.json",
        "cache-dir": tmp_path / "cache", "num-workers": 0, "batch-size": 4, "chunk-size": 4, "device": "cpu",
    }  # fmt: skip
    args = [item for name, value in options.items() for item in (f"--{name}", str(value))]
    report = dedupe.main(args)

    assert report == read_report(tmp_path / "report.json")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    removed = {entry["image_id"]: entry for entry in report["removed"]}
    assert list(removed) == ["10", "11", "12"]
    assert {i: e["match_id"] for i, e in removed.items()} == {
        "10": "00000000009.jpg",
        "11": "00000000002.jpg",
        "12": "00000000005.jpg",
    }
    assert all(e["similarity"] >= 0.8 for e in removed.values())
    assert report["target"] | {"ids_fingerprint": None} == {
        "corpus": "ktvic",
        "split": "test",
        "images": 6,
        "captions": 12,
        "ids_fingerprint": None,
    }
    assert report["reference"] == {"corpus": "uit-openviic", "split": "train", "images": 3}
    assert report["counts"] == {"removed_images": 3, "removed_captions": 6, "kept_images": 3, "kept_captions": 6}
    assert len(list((tmp_path / "cache" / "viclip_ot_embeddings").glob("*.npy"))) == 2
    assert dedupe.main(args) == report  # again, from the embedding cache

    kept = load_corpus(
        "ktvic", tmp_path / "ktvic", "test", cache_dir=tmp_path / "cache", dedup_report=tmp_path / "report.json"
    )
    assert kept["image_id"] == ["13", "14", "15"]
    assert kept["captions"] == [[f"ảnh {i} câu {j}" for j in range(2)] for i in (13, 14, 15)]
    both = load_corpus("ktvic", tmp_path / "ktvic", cache_dir=tmp_path / "cache", dedup_report=tmp_path / "report.json")
    assert both["test"]["image_id"] == ["13", "14", "15"] and both["train"]["image_id"] == ["7"]
    with pytest.raises(CorpusError, match="the dedupe report is for ktvic test, not ktvic train"):
        load_corpus(
            "ktvic", tmp_path / "ktvic", "train", cache_dir=tmp_path / "cache", dedup_report=tmp_path / "report.json"
        )
    with pytest.raises(CorpusError, match="the dedupe report is for ktvic test, not uit-openviic test"):
        load_corpus(
            "uit-openviic",
            tmp_path / "uit",
            "test",
            cache_dir=tmp_path / "cache",
            dedup_report=tmp_path / "report.json",
        )
    write(tmp_path / "ktvic" / "test_data.json", {"images": test["images"][1:], "annotations": test["annotations"][2:]})
    with pytest.raises(CorpusError, match=r"made for other images \(6 images then, 5 now\)"):
        load_corpus(
            "ktvic", tmp_path / "ktvic", "test", cache_dir=tmp_path / "cache", dedup_report=tmp_path / "report.json"
        )


def test_timm_descriptor_embeds(tmp_path):
    descriptor = dedupe.load_descriptor(timm_model="resnet10t", image_size=32, pretrained=False)
    dataset = load_corpus("demo", cache_dir=tmp_path / "cache", train_size=3, validation_size=0, test_size=0)["train"]
    embeddings = dedupe.embed(dataset, descriptor, tmp_path / "emb", batch_size=2)
    assert embeddings.shape == (3, descriptor.model.num_features)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)


# ---------------------------------------------------------------- export


def test_export_parquet_and_push(tmp_path, monkeypatch):
    write_ktvic(tmp_path / "ktvic")
    pushed = []
    monkeypatch.setattr(
        datasets.DatasetDict, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, list(self), kw))
    )
    paths = export.main(
        [
            "--corpus",
            "ktvic",
            "--data-dir",
            str(tmp_path / "ktvic"),
            "--output-dir",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--push-to-hub",
            "someone/ktvic",
        ]
    )
    assert sorted(p.name for p in paths.values()) == ["test.parquet", "train.parquet"]
    assert pushed == [("someone/ktvic", ["train", "test"], {"private": False})]
    original = load_corpus("ktvic", tmp_path / "ktvic", "test", cache_dir=tmp_path / "cache")
    exported = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache2"))
    assert set(exported) == {"train", "test"}
    assert exported["test"].features == original.features
    assert (
        exported["test"]["image_id"] == original["image_id"]
        and exported["test"]["segment_captions"] == original["segment_captions"]
    )
    assert raw_bytes(exported["test"]) == raw_bytes(original)


# ---------------------------------------------------------------- demo corpus


def test_demo_corpus_is_deterministic_with_the_promised_sizes(tmp_path):
    first = load_corpus("demo", cache_dir=tmp_path / "a")
    second = load_corpus("demo", cache_dir=tmp_path / "b")
    assert {split: len(first[split]) for split in first} == {"train": 1000, "validation": 200, "test": 200}
    for split in first:
        assert (
            first[split]["image_id"]
            == second[split]["image_id"]
            == [f"{split}-{i:05d}" for i in range(len(first[split]))]
        )
        assert first[split]["captions"] == second[split]["captions"]
        assert raw_bytes(first[split]) == raw_bytes(second[split])
    row = first["test"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    captions = [c for caps in first["train"]["captions"] for c in caps]
    assert all(len(caps) == 5 and len(set(caps)) == 5 for caps in first["train"]["captions"])
    assert all(unicodedata.normalize("NFC", c) == c for c in captions)
    assert len(set(map(tuple, first["train"]["captions"]))) > 900  # paraphrases vary, scenes too
    # a split-size option leaves the other splits unchanged
    small = load_corpus("demo", cache_dir=tmp_path / "a", train_size=10, validation_size=3)
    assert len(small["train"]) == 10 and len(small["validation"]) == 3
    assert small["train"]["captions"] == first["train"]["captions"][:10] and raw_bytes(small["test"]) == raw_bytes(
        first["test"]
    )
    tiny = load_corpus("demo", cache_dir=tmp_path / "a", train_size=2, validation_size=0, test_size=0, image_size=32)
    assert tiny["train"][0]["image"].size == (32, 32)


def test_demo_captions_state_every_scene_factor():
    rng = np.random.default_rng(0)
    for _ in range(200):
        image, captions, factors = make_scene(rng)
        for caption in captions:
            assert demo.COUNTS[factors["count"]][0] in caption.split()
            for factor, table in (
                ("shape", demo.SHAPES),
                ("colour", demo.COLOURS),
                ("position", demo.POSITIONS),
                ("background", demo.BACKGROUNDS),
            ):
                phrases = table[factors[factor]]
                assert any(phrase in caption for phrase in (phrases if factor == "shape" else phrases[1]))
        pixels = np.asarray(image).reshape(-1, 3).astype(int)
        fill = np.array(demo.COLOURS[factors["colour"]][0])
        assert (np.abs(pixels - fill).max(axis=1) <= 12).sum() > 20 * factors[
            "count"
        ]  # the shapes are drawn in their colour
