"""The image index and its CLI on the demo model and demo-corpus images: rankings equal the model's own similarities,
incremental updates equal a fresh index, unreadable files and wrong models give clear messages, an interrupted update
leaves the previous index."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from conftest import two_process_launch
from search_fixtures import REPO, save_demo_model, write_demo_images
from transformers import AutoModel

from viclip_ot.search import ImageIndex, ModelMismatchError, model_fingerprint

QUERIES = ["hai hình tròn màu đỏ ở bên trái, nền trắng", "một hình vuông màu xanh lá ở giữa", "ba tam giác vàng"]


@pytest.fixture
def images(tmp_path, demo_model_dir):
    """A folder of 10 demo images (3 in a subfolder) and one corrupt file."""
    folder = tmp_path / "photos"
    write_demo_images(folder, tmp_path / "cache", 10)
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def good_files(folder):
    return sorted(path for path in folder.rglob("*.png"))


def test_index_ranks_as_the_model(demo_model, images):
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\): sub/corrupt.jpg"):
        index = ImageIndex.build(demo_model, images, batch_size=4)
    files = good_files(images)
    assert index.paths == files

    similarities = demo_model.encode_text(QUERIES) @ demo_model.encode_image(files).T
    for query, hits, row in zip(QUERIES, index.search(QUERIES, k=len(files)), similarities):
        order = torch.argsort(row, descending=True)
        assert [hit["path"] for hit in hits] == [str(files[i]) for i in order], query
        np.testing.assert_allclose([hit["score"] for hit in hits], row[order].numpy(), atol=1e-5)

    hits = index.search(files[4], k=3)  # an image query finds the image itself first
    assert hits[0]["path"] == str(files[4]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(index.search(QUERIES[0], k=50)) == len(files)  # k beyond the collection


def test_update_matches_fresh_index(demo_model, images, tmp_path):
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        index = ImageIndex.build(demo_model, images, show_progress_bar=False)
    index.save(tmp_path / "index")

    write_demo_images(images, tmp_path / "cache", 2, start=10)  # two new files
    files = good_files(images)
    files[0].unlink()  # a deleted file
    changed = files[1]  # a changed file: another image under the same name
    write_demo_images(tmp_path / "other", tmp_path / "cache", 1, split="validation")[0].replace(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))

    encoded = []
    original = demo_model.get_image_features
    demo_model.get_image_features = lambda pixel_values: encoded.extend(pixel_values) or original(pixel_values)
    try:
        with pytest.warns(UserWarning, match="corrupt.jpg"):
            updated = ImageIndex.load(tmp_path / "index", demo_model).update(show_progress_bar=False)
    finally:
        del demo_model.get_image_features
    assert len(encoded) == 3  # the two new files and the changed one

    with pytest.warns(UserWarning, match="corrupt.jpg"):
        fresh = ImageIndex.build(demo_model, images, show_progress_bar=False)
    assert updated.dataset["path"] == fresh.dataset["path"] and len(fresh) == 11
    assert updated.dataset["mtime_ns"] == fresh.dataset["mtime_ns"]
    np.testing.assert_allclose(updated.embeddings, fresh.embeddings, atol=1e-6)
    for updated_hits, fresh_hits in zip(updated.search(QUERIES, k=5), fresh.search(QUERIES, k=5)):
        assert [hit["path"] for hit in updated_hits] == [hit["path"] for hit in fresh_hits]
        np.testing.assert_allclose(
            [hit["score"] for hit in updated_hits], [hit["score"] for hit in fresh_hits], atol=1e-6
        )


@pytest.mark.parametrize("index_type, options", [("ivf", {"nlist": 2, "nprobe": 2}), ("hnsw", {"ef_search": 64})])
def test_approximate_indexes_saved_and_loaded(demo_model, images, tmp_path, index_type, options):
    """On a small collection, IVF probing every cell and HNSW with a wide search are exact; their settings survive
    saving."""
    with pytest.warns(UserWarning):
        exact = ImageIndex.build(demo_model, images, show_progress_bar=False)
    with pytest.warns(UserWarning):
        approximate = ImageIndex.build(demo_model, images, index_type=index_type, show_progress_bar=False, **options)
    approximate.save(tmp_path / index_type)
    loaded = ImageIndex.load(tmp_path / index_type, demo_model)
    faiss_index = loaded.faiss_index
    assert (faiss_index.nprobe if index_type == "ivf" else faiss_index.hnsw.efSearch) == list(options.values())[-1]
    expected = [[hit["path"] for hit in hits] for hits in exact.search(QUERIES, k=5)]
    assert [[hit["path"] for hit in hits] for hits in loaded.search(QUERIES, k=5)] == expected


def test_wrong_model_and_empty_folder(demo_model, demo_model_dir, images, tmp_path):
    with pytest.warns(UserWarning):
        ImageIndex.build(demo_model, images, show_progress_bar=False).save(tmp_path / "index")
    other = save_demo_model(tmp_path / "other_model", tmp_path / "cache", seed=1)
    other_model = AutoModel.from_pretrained(other, trust_remote_code=True)
    assert model_fingerprint(other_model) != model_fingerprint(demo_model)
    assert model_fingerprint(AutoModel.from_pretrained(demo_model_dir, trust_remote_code=True)) == model_fingerprint(
        demo_model
    )
    with pytest.raises(ModelMismatchError, match="built with another model"):
        ImageIndex.load(tmp_path / "index", other_model)

    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files in"):
        ImageIndex.build(demo_model, tmp_path / "empty")


def test_interrupted_update_leaves_the_previous_index(demo_model, images, tmp_path, monkeypatch):
    with pytest.warns(UserWarning):
        index = ImageIndex.build(demo_model, images, show_progress_bar=False, output=tmp_path / "index")
    before = ImageIndex.load(tmp_path / "index").dataset["path"]

    for path in good_files(images)[:4]:
        path.unlink()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.update(show_progress_bar=False)
    monkeypatch.undo()
    assert ImageIndex.load(tmp_path / "index").dataset["path"] == before
    assert len(index.search(QUERIES[0], k=20)) == 10  # the in-memory index still searches after the failed update


def run_cli(*args, env=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "viclip_ot.search", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_index_and_json_query(demo_model, demo_model_dir, images, tmp_path):
    result = run_cli(
        "index",
        "--model",
        demo_model_dir,
        "--images",
        images,
        "--output",
        tmp_path / "index",
        "--batch-size",
        "4",
        "--backend",
        "torch",  # fp32, as the expected scores below (the default, auto, is bf16 where native)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 1 unreadable image file(s): sub/corrupt.jpg" in result.stderr

    result = run_cli(
        "query", "--index", tmp_path / "index", "--text", QUERIES[0], "--top-k", 3, "--json", "--backend", "torch"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hits = json.loads(result.stdout)
    files = good_files(images)
    similarities = (demo_model.encode_text(QUERIES[0]) @ demo_model.encode_image(files).T)[0]
    top = torch.topk(similarities, 3)
    assert [hit["path"] for hit in hits] == [str(files[i]) for i in top.indices]
    np.testing.assert_allclose([hit["score"] for hit in hits], top.values.numpy(), atol=1e-5)

    result = run_cli("query", "--index", tmp_path / "index", "--image", files[2], "--top-k", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[1].split()[2] == str(files[2])  # a table: rank, score, path

    other = save_demo_model(tmp_path / "other_model", tmp_path / "cache", seed=1)
    result = run_cli("query", "--index", tmp_path / "index", "--text", QUERIES[0], "--model", other)
    assert result.returncode != 0 and "built with another model" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("index", "--model", demo_model_dir, "--images", empty, "--output", tmp_path / "index2")
    assert result.returncode != 0 and f"no image files in {empty}" in result.stderr
    assert not (tmp_path / "index2").exists()


@pytest.mark.slow
def test_cli_index_with_two_processes(demo_model_dir, images, tmp_path):
    """`accelerate launch` with 2 CPU processes: each encodes a share; the saved index equals a one-process one."""
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    command = [
        *two_process_launch(29531),
        "-m",
        "viclip_ot.search",
        "index",
        "--model",
        str(demo_model_dir),
        "--images",
        str(images),
        "--output",
        str(tmp_path / "two"),
        "--batch-size",
        "2",
    ]
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("skipped 1 unreadable image file(s)") == 1  # the main process warns once
    assert run_cli("index", "--model", demo_model_dir, "--images", images, "--output", tmp_path / "one").returncode == 0
    two, one = ImageIndex.load(tmp_path / "two"), ImageIndex.load(tmp_path / "one")
    assert two.dataset["path"] == one.dataset["path"] and len(one) == 10
    np.testing.assert_allclose(two.embeddings, one.embeddings, atol=1e-5)
