"""The image index's storage: resumable runs killed at random points, crash-safe commits killed at every step, one
writer at a time, damaged files, kept index types, re-pointed folders, compressed indexes with exact re-ranking,
filters inside the search, k hits, and a build whose memory does not grow with the collection."""

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from datetime import datetime

import faiss
import numpy as np
import pytest
from filelock import FileLock
from PIL import ExifTags, Image
from search_fixtures import REPO, write_demo_images

from viclip_ot import search
from viclip_ot.search import (
    LOCK_FILE,
    METADATA_FILE,
    EmbeddingsFile,
    ImageIndex,
    IndexDamagedError,
    IndexLockedError,
    choose_index,
    main,
    make_faiss_index,
    write_shard,
)

QUERIES = ["hai hình tròn màu đỏ ở bên trái, nền trắng", "một hình vuông màu xanh lá ở giữa", "ba tam giác vàng"]


class Killed(BaseException):
    """A simulated kill: no `except Exception` catches it, and the code under test has no cleanup that runs on it
    (what `finally` releases, the lock, the OS releases on a real kill)."""


@pytest.fixture
def images(tmp_path):
    """12 demo images (4 in `sub/`) and one corrupt file."""
    folder = tmp_path / "photos"
    write_demo_images(folder, tmp_path / "cache", 12)
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


@pytest.fixture
def counted(demo_model, monkeypatch):
    """The images the demo model encodes, counted (a list that grows by one per image encoded)."""
    encoded = []
    original = demo_model.get_image_features

    def counting(pixel_values):
        encoded.extend(pixel_values)
        return original(pixel_values)

    monkeypatch.setattr(demo_model, "get_image_features", counting)
    return encoded


def contents(index):
    """What an index holds, comparable exactly (embeddings rounded to what batch composition may change)."""
    rows = index.dataset[:]
    return rows, np.round(np.asarray(index.embeddings), 5)


def assert_same_index(index, expected):
    (rows, embeddings), (expected_rows, expected_embeddings) = contents(index), contents(expected)
    assert rows == expected_rows
    np.testing.assert_allclose(embeddings, expected_embeddings, atol=2e-5)
    for hits, expected_hits in zip(index.search(QUERIES, k=5), expected.search(QUERIES, k=5)):
        assert [hit["path"] for hit in hits] == [hit["path"] for hit in expected_hits]


def assert_clean(folder):
    """Nothing but the index: index.json, the lock file and one version folder."""
    names = sorted(path.name for path in folder.iterdir())
    assert names[:2] == [LOCK_FILE, METADATA_FILE] and len(names) == 3 and names[2].startswith("v-"), names


def test_killed_runs_resume_to_the_fresh_index(demo_model, images, tmp_path, counted, monkeypatch):
    """A first run killed at random points (while encoding, while writing a shard, while committing), run again
    each time, ends in exactly the index of one uninterrupted run and encodes no image twice."""
    with pytest.warns(UserWarning, match="corrupt.jpg"):
        fresh = ImageIndex.build(demo_model, images, batch_size=2, show_progress_bar=False, num_workers=2)
    counted.clear()

    rng = np.random.default_rng(0)
    encode = demo_model.get_image_features
    calls = {"encode": 0, "kill": None}

    def killed_encode(pixel_values):  # killed while encoding the n-th batch of a run
        calls["encode"] += 1
        if calls["encode"] == calls["kill"]:
            raise Killed
        return encode(pixel_values)

    replace = os.replace

    def killed_commit(source, target):  # killed just before index.json is replaced
        if str(target).endswith(METADATA_FILE):
            raise Killed
        return replace(source, target)

    monkeypatch.setattr(demo_model, "get_image_features", killed_encode)
    output = tmp_path / "index"

    def run():
        index = ImageIndex(output, images, fresh.fingerprint, fresh.dimension, model=demo_model)
        return index.update(batch_size=2, shard_size=2, show_progress_bar=False)

    for kill in rng.integers(1, 3, size=3):  # 3 runs killed in their first or second batch (of 7)
        calls.update(encode=0, kill=int(kill))
        with pytest.raises(Killed):
            run()
    calls["kill"] = None
    monkeypatch.setattr(os, "replace", killed_commit)
    with pytest.raises(Killed):  # a 4th run encodes the rest and is killed as it commits
        run()
    monkeypatch.setattr(os, "replace", replace)
    assert not (output / METADATA_FILE).exists() and len(counted) == 12

    with pytest.warns(UserWarning, match="corrupt.jpg"):
        index = run()
    assert index.summary == {"images": 12, "encoded": 0, "reused": 12, "skipped": 1}
    assert_same_index(ImageIndex.load(output, demo_model), fresh)
    assert_clean(output)
    assert len(counted) == 12  # no image encoded twice over the 5 runs


def test_a_kill_at_each_step_of_a_commit(demo_model, images, tmp_path, monkeypatch):
    """An update of an IVF index killed at each of its file-system steps leaves a loadable index equal to the old
    or the new one; the next update finishes it and leaves nothing behind."""
    with pytest.warns(UserWarning):
        old = ImageIndex.build(demo_model, images, show_progress_bar=False, index_type="ivf", nlist=2, nprobe=2)
    old_rows = old.dataset["path"]
    for path in sorted(images.glob("*.png"))[:2]:
        path.unlink()
    write_demo_images(images, tmp_path / "cache", 2, start=12)
    with pytest.warns(UserWarning):
        new = ImageIndex.build(demo_model, images, show_progress_bar=False, index_type="ivf", nlist=2, nprobe=2)

    steps = [
        (os, "rename"),
        (os, "replace"),
        (shutil, "rmtree"),
        (search, "write_embeddings"),
        (search.faiss, "write_index"),
        (search.datasets.Dataset, "save_to_disk"),
    ]
    originals = {step: getattr(*step) for step in steps}
    counter = {"calls": 0, "kill": None}

    def counting(step):
        def call(*args, **kwargs):
            counter["calls"] += 1
            if counter["calls"] == counter["kill"]:
                raise Killed
            return originals[step](*args, **kwargs)

        return call

    def update(folder):
        for step in steps:
            monkeypatch.setattr(*step, counting(step))
        try:
            with pytest.warns(UserWarning):
                ImageIndex.load(folder, demo_model).update(show_progress_bar=False, shard_size=2)
        finally:
            for step in steps:
                monkeypatch.setattr(*step, originals[step])

    template = tmp_path / "template"
    old.save(template)
    counter["calls"] = 0
    update(shutil.copytree(template, tmp_path / "count"))
    total = counter["calls"]
    assert total >= 8
    seen = set()
    for kill in range(1, total + 1):
        folder = shutil.copytree(template, tmp_path / f"kill-{kill}")
        counter.update(calls=0, kill=kill)
        with pytest.raises(Killed):
            update(folder)
        counter["kill"] = None
        loaded = ImageIndex.load(folder, demo_model).dataset["path"]
        assert loaded in (old_rows, new.dataset["path"]), kill
        seen.add(loaded == old_rows)
        with pytest.warns(UserWarning):
            finished = ImageIndex.load(folder, demo_model).update(show_progress_bar=False)
        assert finished.dataset["path"] == new.dataset["path"]
        np.testing.assert_allclose(finished.embeddings, new.embeddings, atol=2e-5)
        assert_clean(folder)
        shutil.rmtree(folder)
    assert seen == {True, False}  # kills before and after the commit


def test_one_writer_at_a_time(demo_model, images, tmp_path):
    with pytest.warns(UserWarning):
        ImageIndex.build(demo_model, images, show_progress_bar=False, output=tmp_path / "index")
    index = ImageIndex.load(tmp_path / "index", demo_model)
    with FileLock(tmp_path / "index" / LOCK_FILE):  # another writer
        with pytest.raises(IndexLockedError, match="another process is writing the index"):
            index.update(show_progress_bar=False, lock_timeout=0.2)

    write_demo_images(images, tmp_path / "cache", 2, start=12)
    errors = []

    def run():
        try:
            ImageIndex.load(tmp_path / "index", demo_model).update(show_progress_bar=False, lock_timeout=120)
        except BaseException as error:  # reported below
            errors.append(error)

    with warnings.catch_warnings():  # the unreadable file's warning, from two threads
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=run) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    with pytest.warns(UserWarning):
        fresh = ImageIndex.build(demo_model, images, show_progress_bar=False)
    assert_same_index(ImageIndex.load(tmp_path / "index", demo_model), fresh)
    assert_clean(tmp_path / "index")


def cli(*args):
    """`main(args)`: its exit status (None when it succeeds)."""
    try:
        main([str(arg) for arg in args])
    except SystemExit as exit:
        return exit.code
    return None


def test_damaged_files_and_a_missing_index_json(demo_model, demo_model_dir, images, tmp_path, capsys):
    output = tmp_path / "index"
    assert (
        cli("index", "--model", demo_model_dir, "--images", images, "--output", output, "--index-type", "ivf") is None
    )
    version = output / json.loads((output / METADATA_FILE).read_text())["version"]
    damaged = [output / METADATA_FILE, version / "embeddings.npy", version / "index.faiss"]
    damaged += sorted((version / "rows").glob("*.arrow"))
    for path in damaged:
        copy = shutil.copytree(output, tmp_path / "copy")
        target = copy / path.relative_to(output)
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        with pytest.raises(IndexDamagedError) as error:
            ImageIndex.load(copy)
        message = str(error.value)
        named = target.parent if target.suffix == ".arrow" else target  # the rows: their dataset folder
        assert f"{named} is damaged" in message and "index --rebuild" in message and str(copy) in message, message
        # the command it names rebuilds it
        assert cli("index", "--rebuild", "--model", demo_model_dir, "--images", images, "--output", copy) is None
        assert len(ImageIndex.load(copy)) == 12
        shutil.rmtree(copy)

    (output / METADATA_FILE).unlink()
    capsys.readouterr()
    assert cli("index", "--model", demo_model_dir, "--images", images, "--output", output) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1, errors  # failed before loading the model: no progress bar, no warning
    assert f"{output} exists and holds no image index ({METADATA_FILE} is missing)" in errors[0]


def test_type_kept_folder_repointed_and_json_summary(demo_model, demo_model_dir, images, tmp_path, capsys):
    output = tmp_path / "index"
    assert cli(*["index", "--model", demo_model_dir, "--images", images, "--output", output, "--json"],
               *["--index-type", "ivf", "--nlist", 2, "--nprobe", 1]) is None  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {
        "images": 12,
        "encoded": 12,
        "reused": 0,
        "skipped": 1,
    }
    moved = tmp_path / "moved"
    images.rename(moved)  # a moved folder keeps sizes and modification times
    changed = sorted(moved.glob("*.png"))[0]
    write_demo_images(tmp_path / "other", tmp_path / "cache", 1, split="validation")[0].replace(changed)
    assert cli("index", "--model", demo_model_dir, "--images", moved, "--output", output, "--json") is None
    captured = capsys.readouterr()
    assert f"re-pointing {output} from {images} to {moved}" in captured.err
    assert json.loads(captured.out.splitlines()[-1]) == {"images": 12, "encoded": 1, "reused": 11, "skipped": 1}
    index = ImageIndex.load(output, demo_model)
    assert index.index_type == "ivf" and index.faiss_index.nprobe == 1 and index.faiss_index.nlist == 2
    assert all(path.is_file() and moved in path.parents for path in index.paths)
    # nprobe=1 of 2 cells finds fewer than k: completed exactly, k hits, the exact ranking
    exact = demo_model.encode_text(QUERIES).numpy() @ np.asarray(index.embeddings).T
    for hits, row in zip(index.search(QUERIES, k=12), exact):
        assert [hit["path"] for hit in hits] == [str(index.paths[i]) for i in np.argsort(-row)]


def write_synthetic_shards(folder, count, dim, rng):
    """Shards of 4096 of `count` synthetic clustered unit vectors in `folder/work`, with paths under `a/` (3 in 4) and
    `b/` and one date taken a day; the vectors and paths in path order."""
    centres = rng.standard_normal((max(1, count // 50), dim), dtype=np.float32)
    vectors = centres[rng.integers(len(centres), size=count)] + rng.standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    day = 86_400 * 10**9
    start = int(datetime(2020, 1, 1).timestamp()) * 10**9
    rows = {
        "path": [f"{'b' if row % 4 == 3 else 'a'}/{row:06d}.jpg" for row in range(count)],
        "size": [1000 + row for row in range(count)],
        "mtime_ns": [start + row * day for row in range(count)],
        "taken_ns": [start + row * day for row in range(count)],
        "embedding": list(vectors),
        "error": [""] * count,
    }
    for start in range(0, count, 4096):
        shard = {key: values[start : start + 4096] for key, values in rows.items()}
        write_shard(folder / "work", shard, dim, "synthetic")
    order = np.argsort(rows["path"], kind="stable")
    return vectors[order], np.asarray(rows["path"])[order]


def synthetic_index(folder, count, dim, rng, index_type, **options):
    """An index committed from [`write_synthetic_shards`]: `(index, vectors, paths)`."""
    vectors, paths = write_synthetic_shards(folder, count, dim, rng)
    index = ImageIndex(folder, folder / "photos", "synthetic", dim, index_type, options).commit_shards()
    return index, vectors, paths


def test_commit_keeps_one_row_per_file_the_index_first(tmp_path):
    """Shards committed beside an index: a file already indexed (same path, size and mtime) keeps the index's
    embedding even when a shard holds another one for it; a changed file (new mtime) is a new row; rows stay
    sorted by path."""
    rng = np.random.default_rng(3)
    index, vectors, paths = synthetic_index(tmp_path / "i", 600, 16, rng, "flat")
    first = index.dataset[0]
    other = rng.standard_normal((3, 16), dtype=np.float32)
    shard = {
        "path": [first["path"], first["path"], "z/new.jpg"],
        "size": [first["size"], first["size"], 1],
        "mtime_ns": [first["mtime_ns"], first["mtime_ns"] + 1, 5],
        "taken_ns": [first["taken_ns"], first["taken_ns"], 5],
        "embedding": other,
        "error": ["", "", ""],
    }
    write_shard(index.folder / "work", shard, 16, "synthetic")
    index.commit_shards()
    rows = index.dataset.to_dict()
    assert len(index) == 602 and rows["path"] == sorted(rows["path"])
    keys = list(zip(rows["path"], rows["size"], rows["mtime_ns"]))
    assert len(set(keys)) == 602
    embeddings = np.asarray(index.embeddings)
    np.testing.assert_array_equal(embeddings[keys.index((first["path"], first["size"], first["mtime_ns"]))], vectors[0])
    np.testing.assert_array_equal(
        embeddings[keys.index((first["path"], first["size"], first["mtime_ns"] + 1))], other[1]
    )
    np.testing.assert_array_equal(embeddings[rows["path"].index("z/new.jpg")], other[2])


def exact_top(vectors, queries, k, allowed=None):
    scores = queries @ vectors.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_embeddings_file_reads_the_rows_asked_for(tmp_path):
    """Rows read from disk (runs of consecutive ids in one read, single rows, the last row) equal numpy's own
    reading of the file, the blocks cover every row in order, and a file cut short is reported, named."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1000, 24), dtype=np.float32)
    np.save(tmp_path / "e.npy", vectors)
    embeddings = EmbeddingsFile(tmp_path / "e.npy")
    ids = np.sort(np.concatenate([rng.choice(1000, 50, replace=False), np.arange(300, 340), [0, 999]]))
    ids = np.unique(ids)
    np.testing.assert_array_equal(embeddings[ids], vectors[ids])
    np.testing.assert_array_equal(embeddings[[]], vectors[:0])
    np.testing.assert_array_equal(np.concatenate(list(embeddings.blocks(size=300))), vectors)
    with open(tmp_path / "e.npy", "r+b") as file:  # cut short while open (np.load rejects a short file on opening)
        file.truncate(os.path.getsize(tmp_path / "e.npy") - 24 * 4 * 10)
    with pytest.raises(IndexDamagedError, match=r"e\.npy is damaged \(it ends before row 1000\)"):
        embeddings[[995, 996, 997, 998, 999]]


@pytest.mark.parametrize("index_type", ["ivfpq", "opq"])
def test_compressed_index_reranked_is_exact(tmp_path, index_type):
    """PQ scores are approximate; probing every cell and re-scoring every candidate from the embeddings gives the
    exact top-k (provably: every vector is a candidate)."""
    rng = np.random.default_rng(0)
    index, vectors, _ = synthetic_index(tmp_path / "i", 2000, 32, rng, index_type, nlist=8, nprobe=8, pq_m=4)
    queries = vectors[rng.integers(2000, size=20)] + 0.1 * rng.standard_normal((20, 32), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    expected = exact_top(vectors, queries, 10)
    index.index_options["rerank"] = 200  # 200 * 10 = every vector re-scored
    paths = [[hit["path"] for hit in hits] for hits in index.search_embeddings(queries, 10)]
    assert paths == [[str(index.root / index.dataset[int(i)]["path"]) for i in row] for row in expected]
    index.index_options["rerank"] = 0  # PQ scores alone are not exact
    approximate = [[hit["score"] for hit in hits] for hits in index.search_embeddings(queries, 10)]
    exact_scores = np.take_along_axis(queries @ vectors.T, expected, 1)
    assert np.abs(np.asarray(approximate) - exact_scores).max() > 1e-3


def test_compressed_codes_and_the_memory_budget():
    """IVF-PQ uses 4-bit fast-scan codes (plain PQ with fewer bits for a tiny collection) and probes a quarter of the
    cells by default; `auto` picks, for a budget, what the bytes per vector allow (768-d, 1M vectors: IVF-Flat needs
    1M x (3072 + 8) bytes plus 1000 centroids x 3072; IVF-PQ needs 1M x (pq_m / 2 + 8) plus the centroids)."""
    made = [make_faiss_index("ivfpq", 768, 10_000), make_faiss_index("ivfpq", 32, 40, pq_m=4)]  # kept alive
    index, tiny = (faiss.downcast_index(faiss.extract_index_ivf(each)) for each in made)
    assert isinstance(index, faiss.IndexIVFPQFastScan) and (index.pq.M, index.pq.nbits) == (64, 4)
    assert (index.nlist, index.nprobe) == (100, 25)
    assert isinstance(tiny, faiss.IndexIVFPQ) and tiny.pq.nbits == 3
    centroids = 1000 * 768 * 4
    assert choose_index(100_000, 768, 1) == ("flat", {})
    assert choose_index(1_000_000, 768, 1_000_000 * 3080 + centroids) == ("ivf", {})
    assert choose_index(1_000_000, 768, 1_000_000 * 3080) == ("ivfpq", {"pq_m": 192, "hnsw_coarse": False})
    budget = 1_000_000 * (49 + 8) + centroids  # room for 98 sub-quantisers; 96 is the largest dividing 768
    assert choose_index(1_000_000, 768, budget) == ("ivfpq", {"pq_m": 96, "hnsw_coarse": False})
    with pytest.raises(ValueError, match="cannot hold 1,000,000 vectors"):
        choose_index(1_000_000, 768, 1_000_000 * 8)


@pytest.mark.parametrize("index_type, options", [("ivf", {"nlist": 16, "nprobe": 1}), ("hnsw", {}), ("opq", {})])
def test_filters_inside_the_search(tmp_path, index_type, options):
    rng = np.random.default_rng(1)
    index, vectors, paths = synthetic_index(tmp_path / "i", 3000, 32, rng, index_type, **options)
    queries = vectors[:5] + 0.2 * rng.standard_normal((5, 32), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    in_a = np.char.startswith(paths.astype(str), "a/")
    for hits in index.search_embeddings(queries, 20, folder="a"):  # 2250 images: through the FAISS selector
        assert len(hits) == 20 and all(hit["path"].startswith(str(index.root / "a") + "/") for hit in hits)
    taken = np.asarray(index.dataset["taken_ns"])
    after, before = datetime(2022, 6, 1), datetime(2022, 6, 8)
    window = (taken >= after.timestamp() * 1e9) & (taken < before.timestamp() * 1e9)
    both = window & in_a
    assert 0 < both.sum() < 10
    results = index.search_embeddings(queries, 10, folder="a/", taken_after=after, taken_before="2022-06-08")
    expected = exact_top(vectors, queries, int(both.sum()), both)
    assert [[hit["path"] for hit in hits] for hits in results] == [
        [str(index.root / paths[i]) for i in row] for row in expected
    ]
    if index_type == "ivf":  # one cell of 16 probed: the exact answer among the 2250 in `a/` when FAISS finds fewer
        results = index.search_embeddings(queries, 300, folder="a")
        assert [len(hits) for hits in results] == [300] * 5
    assert index.search_embeddings(queries[:1], 5, folder="nowhere") == [[]]


PEAK_SCRIPT = """
import sys
from viclip_ot.search import ImageIndex
ImageIndex(sys.argv[1], sys.argv[1] + "/photos", "synthetic", 768, "ivfpq", {"pq_m": 16, "nlist": 64}).commit_shards()
# VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, from before exec)
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
def test_build_memory_does_not_grow_with_the_collection(tmp_path):
    """The build (embeddings gathered from the shards into one file, IVF-PQ trained on a sample and filled in
    a stream) of 20k and 80k 768-d vectors (61 MB and 246 MB): its peak memory grows by less than half of what
    the embeddings do (only per-image metadata and PQ codes grow; a build holding the embeddings would grow by all
    of it). Measured: 45-71 MB of the 184 MB, varying from run to run with the allocators' reuse of freed blocks."""
    peaks = {}
    for count in (20_000, 80_000):
        write_synthetic_shards(tmp_path / str(count), count, 768, np.random.default_rng(0))
        result = subprocess.run(
            [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / str(count))],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        peaks[count] = int(result.stdout.split()[-1])
        assert len(ImageIndex.load(tmp_path / str(count))) == count
    growth = peaks[80_000] - peaks[20_000]
    assert growth < 0.5 * 60_000 * 768 * 4, peaks


def test_date_taken_from_exif_else_mtime(demo_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2019:05:01 10:00:00"
    Image.new("RGB", (40, 30), "red").save(folder / "with_exif.jpg", exif=exif)
    Image.new("RGB", (40, 30), "blue").save(folder / "without.jpg")
    index = ImageIndex.build(demo_model, folder, show_progress_bar=False)
    taken = dict(zip(index.dataset["path"], index.dataset["taken_ns"]))
    assert taken["with_exif.jpg"] == int(datetime(2019, 5, 1, 10).timestamp()) * 10**9
    assert taken["without.jpg"] == (folder / "without.jpg").stat().st_mtime_ns
    hits = index.search(QUERIES[0], k=5, taken_before="2020-01-01")
    assert [hit["path"] for hit in hits] == [str(folder / "with_exif.jpg")]


def test_text_and_image_query(demo_model, images):
    with pytest.warns(UserWarning):
        index = ImageIndex.build(demo_model, images, show_progress_bar=False)
    image = index.paths[3]
    text = demo_model.encode_text([QUERIES[1]]).numpy()[0]
    picture = demo_model.encode_image([image]).numpy()[0]
    combined = 0.7 * text + 0.3 * picture
    combined /= np.linalg.norm(combined)
    hits = index.search_embeddings(index.query_embedding(QUERIES[1], image, image_weight=0.3), k=12)[0]
    order = np.argsort(-(np.asarray(index.embeddings) @ combined))
    assert [hit["path"] for hit in hits] == [str(index.paths[i]) for i in order]
    only_image = index.search_embeddings(index.query_embedding(image=image), k=1)[0]
    assert only_image[0]["path"] == str(image)
