"""Search a folder of photos by Vietnamese text, by a similar image, or both, with filters by folder and date taken.

An [`ImageIndex`] is a folder holding one L2-normalised embedding per image (a float32 `.npy` matrix, memory-mapped),
the images' path, size, modification time and date taken (a `datasets` dataset), a FAISS inner-product index, and
the fingerprint of the model that made them.

```
python -m viclip_ot.search index --model MODEL --images DIR --output INDEX [--index-type flat|ivf|hnsw|ivfpq|opq]
python -m viclip_ot.search query --index INDEX --text "con mèo nằm trên ghế" [--top-k 5] [--folder 2023] [--json]
```

`index` writes the embeddings in shards as it encodes, so an interrupted run continues where it stopped; re-running
it encodes only new or changed files and drops deleted ones; with `accelerate launch --num_processes N -m
viclip_ot.search index ...` each process encodes a share of the files and writes its own shards.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path

import datasets
import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from filelock import FileLock, Timeout
from PIL import ExifTags, Image
from tqdm.auto import tqdm

from modeling_viclip_ot import ENCODE_BACKENDS, model_fingerprint
from processing_viclip_ot import PHOTOS_EXTRA, PLUGIN_EXTENSIONS

from .cli import run
from .files import atomic_write, fsync
from .loading import load_model

INDEX_TYPES = ("flat", "ivf", "hnsw", "ivfpq", "opq", "auto")
COMPRESSED_TYPES = ("ivfpq", "opq")
METADATA_FILE = "index.json"
LOCK_FILE = ".lock"
WORK_FOLDER = "work"  # shards of a run not yet committed
WORK_MODEL_FILE = "model.json"  # the fingerprint of the model that wrote the shards
ROWS_FOLDER = "rows"
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "index.faiss"
FORMAT_VERSION = 2
SHARD_SIZE = 1024  # images per shard: an interrupted run loses at most this many encodings per process
READ_BLOCK = 16384  # rows read from disk at a time when building and scanning (48 MiB at 768-d)
LOCK_TIMEOUT = 10.0  # seconds a writer waits for another one
WARN_EXAMPLES = 5  # unreadable files named in the warning
TRAIN_POINTS_PER_CELL = 64  # IVF k-means sample size per cell
TRAIN_MAX = 131_072  # FAISS training sample, at most (400 MB at 768-d)
RERANK = 30  # compressed indexes: candidates per hit re-scored exactly from the embeddings
MASKS_KEPT = 8  # filters whose row masks are kept (a byte per image each)
EXACT_FILTER_MAX = 65_536  # a filter that leaves at most this many images is searched exactly
# Exceptions PIL raises for a file it cannot decode (truncated, corrupt, not an image, too large).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Exceptions reading a damaged index file raises (pyarrow's, faiss' RuntimeError, numpy's ValueError, JSON's).
DAMAGED = (OSError, ValueError, RuntimeError, KeyError, pa.ArrowException)


class IndexDamagedError(ValueError):
    """A file of a saved index cannot be read."""


class ModelMismatchError(ValueError):
    """A model other than the one that built the index (its fingerprint differs)."""


class IndexLockedError(TimeoutError):
    """Another process is writing the index."""


def image_extensions() -> set[str]:
    """Lower-case file extensions (with the dot) that PIL can open."""
    return {extension for extension, kind in Image.registered_extensions().items() if kind in Image.OPEN}


def scan_images(root: str | Path, follow_symlinks: bool = True) -> list[tuple[str, int, int]]:
    """`(relative path, size in bytes, mtime in ns)` of every image file under `root` (recursively, hidden files and
    folders left out), sorted by path.

    Symlinked folders are followed (`follow_symlinks=True`, the default) once each: a folder reached again, through a
    loop or a second link, is not walked twice. Entries that cannot be walked (dangling symlinks, symlink loops,
    unreadable folders or files, files that are no regular files) are left out, and photo files whose format needs a
    plugin that is missing (HEIC without pillow-heif) too: one warning counts and names them, and the names that are
    not valid UTF-8. Such a name is returned with its raw bytes as `os.fsdecode` gives them (surrogate escapes), so
    that `root / path` opens the same file; `storable_path` turns it into text that Arrow and JSON can store.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    extensions = image_extensions()
    files, skipped, needs_plugin, not_utf8 = [], [], [], []
    visited = set()  # (st_dev, st_ino) of the folders walked

    def walk(folder: Path, relative: str) -> None:
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in visited:
                skipped.append((relative or ".", "folder already walked (a symlink loop or a second link)"))
                return
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as scanned:
                entries = sorted(scanned, key=lambda entry: entry.name)
        except OSError as error:
            skipped.append((relative or ".", error.strerror or type(error).__name__))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_dir(follow_symlinks=follow_symlinks):
                    walk(Path(entry.path), name)
                    continue
                extension = os.path.splitext(entry.name)[1].lower()
                if extension not in extensions:
                    if extension in PLUGIN_EXTENSIONS:
                        needs_plugin.append(name)
                    continue
                if entry.is_symlink() and not follow_symlinks:
                    continue
                stat = entry.stat(follow_symlinks=True)  # a dangling symlink or a loop raises here
                if not entry.is_file(follow_symlinks=True):
                    skipped.append((name, "not a regular file"))
                    continue
                if not os.access(entry.path, os.R_OK):
                    raise PermissionError(errno.EACCES, "permission denied")
            except OSError as error:
                skipped.append((name, error.strerror or type(error).__name__))
                continue
            if re.search("[\udc80-\udcff]", name):
                not_utf8.append(name)
            files.append((name, stat.st_size, stat.st_mtime_ns))

    walk(root, "")
    problems = []
    if skipped:
        problems.append(f"{len(skipped)} entries skipped: {_examples(f'{path} ({why})' for path, why in skipped)}")
    if needs_plugin:
        kinds = "/".join(sorted({PLUGIN_EXTENSIONS[os.path.splitext(path)[1].lower()] for path in needs_plugin}))
        problems.append(
            f"{len(needs_plugin)} {kinds} files skipped, to read them: {PHOTOS_EXTRA}: {_examples(needs_plugin)}"
        )
    if not_utf8:
        problems.append(
            f"{len(not_utf8)} names are not valid UTF-8 (indexed): {_examples(map(storable_path, not_utf8))}"
        )
    if problems:
        warnings.warn(f"walking {root}: " + "; ".join(problems), stacklevel=2)
    return sorted(files)


def _examples(items) -> str:
    items = list(items)
    more = f", and {len(items) - WARN_EXAMPLES} more" if len(items) > WARN_EXAMPLES else ""
    return ", ".join(items[:WARN_EXAMPLES]) + more


def storable_path(path: str) -> str:
    """`path` as valid Unicode text, reversibly (see `original_path`): the raw bytes of a non-UTF-8 name (surrogate
    escapes) become `\\xNN`, a backslash becomes two."""
    return re.sub(r"[\\\udc80-\udcff]", lambda m: "\\\\" if m[0] == "\\" else f"\\x{ord(m[0]) - 0xDC00:02x}", path)


def original_path(stored: str) -> str:
    """The path that `storable_path` stored."""
    return re.sub(r"\\(\\|x[0-9a-f]{2})", lambda m: "\\" if m[1] == "\\" else chr(0xDC00 + int(m[1][1:], 16)), stored)


def default_nlist(num_vectors: int) -> int:
    """IVF cells for `num_vectors` vectors: `sqrt(n)`, at most n / 39 (FAISS' k-means wants 39 points a cell)."""
    return max(1, min(round(math.sqrt(num_vectors)), num_vectors // 39))


def pq_choices(dim: int) -> list[int]:
    """PQ sub-quantiser counts for `dim`-d vectors, most accurate first: the divisors of `dim` up to dim / 4 (a
    sub-quantiser codes at least 4 dimensions in 4 bits)."""
    return [m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0]


def default_pq_m(dim: int) -> int:
    """PQ sub-quantisers by default: the largest divisor of `dim` up to dim / 12 (64 at 768-d: 32 bytes per vector).
    Measured at 1M vectors (`benchmarks/search_build.py`), with the default `RERANK` its candidates hold 98 % of the
    true top 10 where the probed cells hold 99 %; dim / 4 holds them all at 10 x k candidates, but scans 3x slower."""
    return next(m for m in range(max(1, dim // 12), 0, -1) if dim % m == 0)


def make_faiss_index(
    index_type: str,
    dim: int,
    num_vectors: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
    pq_m: int | None = None,
    hnsw_coarse: bool = False,
) -> faiss.Index:
    """An empty inner-product FAISS index (cosine similarity of unit vectors), made with `faiss.index_factory`.

    - `flat`: exact search.
    - `ivf`: `nlist` k-means cells (default [`default_nlist`]), `nprobe` of them searched per query (default
      `nlist / 8`); `IVF{nlist},Flat`.
    - `hnsw`: a graph with `hnsw_m` links per node, built with `ef_construction` and searched with `ef_search`.
    - `ivfpq`: IVF cells holding product-quantised residuals, `pq_m` sub-quantisers of 4 bits (`pq_m / 2` bytes
      per vector, default [`default_pq_m`]) scanned with FAISS' SIMD fast-scan kernels (`PQ{pq_m}x4fs`; fewer bits,
      no fast scan, below 64 vectors); `nprobe` defaults to `nlist / 4`, the scan being cheap. `opq`: the same after
      an OPQ rotation. With `hnsw_coarse`, the cells are found through an HNSW graph (hundreds of thousands of
      cells).

    IVF and PQ indexes must be trained ([`train_faiss_index`]).
    """
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type not in INDEX_TYPES[:-1]:
        raise ValueError(f"index_type={index_type!r} is not supported; choose one of {', '.join(INDEX_TYPES)}")
    nlist = nlist or default_nlist(num_vectors)
    coarse = f"IVF{nlist}_HNSW32" if hnsw_coarse else f"IVF{nlist}"
    pq_m = pq_m or default_pq_m(dim)
    nbits = max(1, min(4, int(math.log2(max(2, num_vectors))) - 2))  # 16 codes a sub-quantiser, fewer when tiny
    codes = f"PQ{pq_m}x4fs" if nbits == 4 else f"PQ{pq_m}x{nbits}np"  # np: no polysemous training (unused here)
    factory = {
        "ivf": f"{coarse},Flat",
        "hnsw": f"HNSW{hnsw_m},Flat",
        "ivfpq": f"{coarse},{codes}",
        "opq": f"OPQ{pq_m},{coarse},{codes}",
    }[index_type]
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(nlist, nprobe or max(1, nlist // (8 if index_type == "ivf" else 4)))
        if hnsw_coarse:
            faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(ef_search, 2 * ivf.nprobe)
    if index_type == "hnsw":
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    return index


def choose_index(num_vectors: int, dim: int, max_memory: int) -> tuple[str, dict]:
    """The most accurate index type (and options) whose memory fits `max_memory` bytes, as autofaiss chooses: exact
    search up to 100k vectors (the memory-mapped embeddings are scanned), IVF-Flat while every vector fits, else
    IVF-PQ with the most sub-quantisers that fit (an HNSW coarse quantiser past 65,536 cells)."""
    nlist = default_nlist(num_vectors)
    coarse = nlist * dim * 4
    if num_vectors <= 100_000:
        return "flat", {}
    if num_vectors * (dim * 4 + 8) + coarse <= max_memory:
        return "ivf", {}
    for pq_m in pq_choices(dim):
        if num_vectors * (math.ceil(pq_m / 2) + 8) + coarse <= max_memory:  # codes and ids
            return "ivfpq", {"pq_m": pq_m, "hnsw_coarse": nlist > 65_536}
    raise ValueError(
        f"max_index_memory={max_memory:,} bytes cannot hold {num_vectors:,} vectors: the smallest index needs "
        f"{num_vectors * 9 + coarse:,}"
    )


def train_faiss_index(index: faiss.Index, vectors) -> faiss.Index:
    """Train an IVF / PQ index on a random sample of `vectors` (up to `TRAIN_POINTS_PER_CELL` a cell, at least 64
    per PQ code, at most `TRAIN_MAX`; `vectors`: an array, or anything indexed by a sorted array of row numbers);
    other indexes need no training."""
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        ivf = faiss.downcast_index(ivf) if ivf is not None else None  # IndexIVFPQ, with its `pq`
        wanted = TRAIN_POINTS_PER_CELL * (ivf.nlist if ivf is not None else 1)
        if ivf is not None and hasattr(ivf, "pq"):
            wanted = max(wanted, 64 * ivf.pq.ksub)
            ivf.pq.cp.min_points_per_centroid = 1  # no warnings for small collections
        if ivf is not None:
            ivf.cp.min_points_per_centroid = 1
        size = min(len(vectors), wanted, TRAIN_MAX)
        sample = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    return index


def search_parameters(index: faiss.Index, mask: np.ndarray | None):
    """FAISS search parameters restricting `index`'s search to the rows where `mask` is true (`None`: no
    restriction), keeping the index's own `nprobe` / `efSearch`; `(parameters, bitmap)`, the bitmap to be kept
    alive during the search."""
    if mask is None:
        return None, None
    bitmap = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parameters = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        parameters = faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    else:
        parameters = faiss.SearchParameters(sel=selector)
    if isinstance(index, faiss.IndexPreTransform):
        parameters = faiss.SearchParametersPreTransform(index_params=parameters)
    return parameters, (bitmap, selector)


# ----------------------------------------------------------------------------------------------------------------
# Embeddings on disk
# ----------------------------------------------------------------------------------------------------------------


class EmbeddingsFile:
    """A float32 `(n, dim)` `.npy` matrix read from disk a piece at a time, never held in memory: `file[ids]` reads
    the rows `ids` (sorted), [`blocks`](#blocks) all rows in order, `file.memmap` maps it for searching."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.memmap = np.load(self.path, mmap_mode="r")
        if self.memmap.dtype != np.float32 or self.memmap.ndim != 2:
            raise ValueError(f"expected a float32 matrix, found {self.memmap.dtype} of shape {self.memmap.shape}")
        self.shape = self.memmap.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.empty((len(ids), self.shape[1]), np.float32)
        starts = np.flatnonzero(np.diff(ids, prepend=-2) != 1)  # each run of consecutive rows is one read
        with open(self.path, "rb", buffering=0) as file:
            for start, end in zip(starts, [*starts[1:], len(ids)]):
                self._read_into(file, int(ids[start]), rows[start:end])
        return rows

    def blocks(self, size: int = READ_BLOCK):
        with open(self.path, "rb", buffering=0) as file:
            for start in range(0, len(self), size):
                yield self._read_into(file, start, np.empty((min(size, len(self) - start), self.shape[1]), np.float32))

    def _read_into(self, file, start: int, rows: np.ndarray) -> np.ndarray:
        """Fill `rows` with the rows from `start` on, by unbuffered reads straight into it (a buffered read of a
        3 KB row from a cold disk measured 2-3x slower: it reads, and reads ahead, more than the row)."""
        file.seek(self.memmap.offset + start * rows.shape[1] * 4)
        view = memoryview(rows).cast("B")
        while view:
            count = file.readinto(view)
            if not count:
                raise IndexDamagedError(f"{self.path} is damaged (it ends before row {start + len(rows)})")
            view = view[count:]
        return rows


def write_embeddings(path: Path, blocks, num_rows: int, dim: int) -> None:
    """Write the float32 blocks (in order, `num_rows` rows in all) as one `.npy` matrix, flushed to disk."""
    with open(path, "wb") as file:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        np.lib.format.write_array_header_2_0(file, {**header, "shape": (num_rows, dim)})
        written = 0
        for block in blocks:
            np.ascontiguousarray(block, dtype=np.float32).tofile(file)
            written += len(block)
        if written != num_rows:
            raise RuntimeError(f"wrote {written} rows to {path}, expected {num_rows}")
        file.flush()
        os.fsync(file.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, and the folders themselves, to disk."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        fsync(path)


def _write_json(path: Path, value) -> None:
    """Replace `path` by `value` as JSON, atomically and durably."""
    with atomic_write(path, durable=True) as temporary:
        temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


def _row_features() -> datasets.Features:
    return datasets.Features(
        {
            "path": datasets.Value("string"),
            "size": datasets.Value("int64"),
            "mtime_ns": datasets.Value("int64"),
            "taken_ns": datasets.Value("int64"),
        }
    )


KEY = ["path", "size", "mtime_ns"]  # a file is encoded again when one of these changes
FOUND_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("taken_ns", pa.int64())]
    + [("error", pa.string()), ("source", pa.int32()), ("row", pa.int64())]
)


def files_table(files: list[tuple[str, int, int]]) -> pa.Table:
    """`(path, size, mtime_ns)` triples as an Arrow table of the `KEY` columns."""
    columns = list(zip(*files)) or [[], [], []]
    return pa.table({name: pa.array(column, FOUND_SCHEMA.field(name).type) for name, column in zip(KEY, columns)})


def _shard_features(dim: int) -> datasets.Features:
    return datasets.Features(
        {
            **_row_features(),
            "embedding": datasets.List(datasets.Value("float32"), length=dim),
            "error": datasets.Value("string"),
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# Decoding and encoding
# ----------------------------------------------------------------------------------------------------------------


def date_taken(path: str | Path) -> int | None:
    """EXIF `DateTimeOriginal` of an image file, in ns since the epoch (read as local time); `None` without one."""
    try:
        with Image.open(path) as image:
            value = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal)
        if value:
            return int(datetime.strptime(str(value).strip()[:19], "%Y:%m:%d %H:%M:%S").timestamp()) * 10**9
    except (*UNREADABLE, TypeError):
        pass
    return None


class ImageFiles(torch.utils.data.Dataset):
    """The images `root / name` of `names` as `(name, pixel values or None, date taken in ns or None, error or "")`:
    decoded and preprocessed by `image_processor` (the model's), in `torch.utils.data.DataLoader` workers."""

    def __init__(self, root: Path, names: list[str], image_processor):
        self.root, self.names, self.image_processor = Path(root), names, image_processor

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, position):
        name = self.names[position]
        path = self.root / original_path(name)
        try:
            image = self.image_processor.load(path)
        except UNREADABLE as error:
            return name, None, None, f"{type(error).__name__}: {error}"
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return name, pixel_values, date_taken(path), ""


@torch.no_grad()
def encode_files(
    model, root: Path, paths: list[str], batch_size: int = 32, show_progress_bar: bool = True, num_workers: int = 0
):
    """Encode the files `paths` (relative to `root`) `batch_size` at a time, decoded and preprocessed by
    `num_workers` worker processes while the model encodes the previous batches (0: in this process). Yields, batch
    by batch in order, `(names, embeddings, dates taken, failures)`: the readable files' names, their float32 unit
    embeddings (as `model.encode_image` computes them) and [`date_taken`], and `(path, error)` of the files that
    could not be decoded."""
    dataset = ImageFiles(root, paths, model.processor.image_processor)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    dim = model.config.projection_dim
    model.eval()
    with tqdm(total=len(paths), desc="encoding images", unit="image", disable=not show_progress_bar) as progress:
        for batch in loader:
            kept = [(name, pixels, taken) for name, pixels, taken, _ in batch if pixels is not None]
            failures = [(name, error) for name, pixels, _, error in batch if pixels is None]
            embeddings = np.empty((0, dim), np.float32)
            if kept:
                embeddings = model.encode_pixel_values(torch.stack([pixels for _, pixels, _ in kept])).numpy()
            yield [name for name, _, _ in kept], embeddings, [taken for _, _, taken in kept], failures
            progress.update(len(batch))


def warn_unreadable(failures: list[tuple[str, str]]) -> None:
    """One warning counting the unreadable files and naming the first few."""
    if failures:
        examples = "; ".join(f"{path} ({error})" for path, error in failures[:WARN_EXAMPLES])
        more = f"; and {len(failures) - WARN_EXAMPLES} more" if len(failures) > WARN_EXAMPLES else ""
        warnings.warn(f"skipped {len(failures)} unreadable image file(s): {examples}{more}", stacklevel=3)


class ImageIndex:
    """Embeddings of the images under `root`, kept in the index folder `folder`, searchable by text, by image or both,
    filtered by folder and date taken.

    Build one with [`ImageIndex.build`], refresh it with [`update`](#update), query it with [`search`](#search) /
    [`search_embeddings`](#search_embeddings), open a saved one with [`ImageIndex.load`], copy it with
    [`save`](#save).

    The folder holds `index.json` (what follows, and the name of the current version), one version folder `v-*`
    (`rows/`: a `datasets` dataset with columns `path` (relative to `root`), `size`, `mtime_ns`, `taken_ns`, sorted by
    path; `embeddings.npy`: the unit embeddings in the same order, memory-mapped; `index.faiss` for approximate
    types), `work/` (shards of a run not yet committed) and `.lock`. A commit writes a new version folder, then
    replaces `index.json` atomically, then deletes the old version: the folder always holds a complete index.

    Attributes:
        dataset (`datasets.Dataset`): the rows (memory-mapped), in embedding order.
        embeddings (`np.memmap`): `(len(index), dimension)` float32.
        faiss_index (`faiss.Index` or `None`): the approximate index (`None` for `flat`: exact scan of `embeddings`).
        root (`Path`): the indexed folder; fingerprint (`str`): [`model_fingerprint`] of the model that made them.
        index_type (`str`), index_options (`dict`): how the FAISS index is built (see [`make_faiss_index`],
            [`choose_index`] for `auto` with `max_index_memory`; `rerank`: candidates per hit re-scored exactly).
        summary (`dict`): what the last [`update`](#update) did: `images`, `encoded`, `reused`, `skipped`.
        model: the model that encodes queries (`None` for an index loaded without one).
    """

    def __init__(
        self, folder, root, fingerprint, dimension, index_type="flat", index_options=None, model=None, model_name=""
    ):
        self.folder = Path(folder).resolve()
        self.root = Path(root).resolve()
        self.fingerprint = fingerprint
        self.dimension = dimension
        self.index_type = index_type
        self.index_options = dict(index_options or {})
        self.model = model
        self.model_name = model_name
        self.version = None
        self.dataset = datasets.Dataset.from_dict({column: [] for column in _row_features()}, _row_features())
        self._embeddings_file = None  # the open version's embeddings (`None`: no version yet)
        self.faiss_index = None
        self._masks = {}  # [`_mask`]'s filters of the open version
        self.summary = {}

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def embeddings(self) -> np.ndarray:
        """The `(n, dimension)` embeddings of the open version, memory-mapped."""
        if self._embeddings_file is None:
            return np.empty((0, self.dimension), np.float32)
        return self._embeddings_file.memmap

    @property
    def paths(self) -> list[Path]:
        """Absolute paths of the indexed images, in the dataset's order."""
        return [self.root / original_path(path) for path in self.dataset["path"]]

    @property
    def _work(self) -> Path:
        return self.folder / WORK_FOLDER

    # ------------------------------------------------------------------------------------------------------------
    # Building and updating
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model,
        folder: str | Path,
        batch_size: int = 32,
        index_type: str = "flat",
        show_progress_bar: bool = True,
        output: str | Path | None = None,
        num_workers: int = 0,
        **index_options,
    ) -> ImageIndex:
        """Encode every image under `folder` (recursively) with `model` into the index folder `output` (default: a
        temporary folder, removed with the object; [`save`](#save) copies it). A run interrupted before it finished
        is resumed by building into the same `output` again. Unreadable files are skipped with one warning; a folder
        without readable images is an error. Under `accelerate launch` each process encodes a share and every
        process gets the whole index."""
        temporary = None
        if output is None:
            temporary = tempfile.TemporaryDirectory(prefix="viclip-index-")
            output = temporary.name
        output = Path(output)
        if (output / METADATA_FILE).is_file():
            raise FileExistsError(f"{output} already holds an index: update it (`ImageIndex.load(output).update()`)")
        check_index_folder(output)
        dim = model.config.projection_dim
        index = cls(output, folder, model_fingerprint(model), dim, index_type, index_options, model, model.name_or_path)
        index._temporary = temporary  # removed when the index is
        return index.update(batch_size=batch_size, show_progress_bar=show_progress_bar, num_workers=num_workers)

    def update(
        self,
        model=None,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        num_workers: int = 0,
        shard_size: int = SHARD_SIZE,
        rebuild: bool = False,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> ImageIndex:
        """Rescan `root`, encode new and changed files (by path relative to `root`, size and modification time), drop
        deleted ones and commit the result to `folder`; it equals a freshly built index (`rebuild`: re-encode
        everything). Encodings are written to `work/` every `shard_size` images, so an interrupted update, run
        again, encodes only what is missing. One writer at a time: another one waits up to `lock_timeout` seconds,
        then fails. Returns `self`, with [`summary`](#summary) set."""
        model = self._checked_model(model)
        # Paths are kept as `storable_path` text from here on, and opened through `original_path`.
        files = [(storable_path(path), size, mtime) for path, size, mtime in scan_images(self.root)]
        if not files:
            raise ValueError(f"no image files in {self.root} (looked for {', '.join(sorted(image_extensions()))})")
        state = PartialState()
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / LOCK_FILE, timeout=lock_timeout)
        error = None
        if state.is_main_process:
            try:
                lock.acquire()
            except Timeout:
                error = (
                    f"another process is writing the index {self.folder} (it holds {lock.lock_file}); wait for it to "
                    f"finish (waited {lock_timeout:g} s)"
                )
        if state.num_processes > 1:
            error = next((message for message in gather_object([error]) if message), None)
        if error:
            raise IndexLockedError(error)
        try:
            return self._update(model, files, batch_size, show_progress_bar, num_workers, shard_size, rebuild, state)
        finally:
            if state.is_main_process:
                lock.release()

    def _update(self, model, files, batch_size, show_progress_bar, num_workers, shard_size, rebuild, state):
        if state.is_main_process:
            if rebuild:
                shutil.rmtree(self._work, ignore_errors=True)
            try:
                metadata = read_metadata(self.folder, missing_ok=True)
            except ValueError:  # a damaged index.json: nothing of it can be used
                if not rebuild:
                    raise
                metadata = {"version": None}
            self._clean(metadata)
        state.wait_for_everyone()
        if not rebuild:
            self._reopen()  # another writer may have committed since this index was loaded
        found, _ = self._reusable(include_index=not rebuild)
        todo = files_table(files).join(found.select(KEY), keys=KEY, join_type="left anti").sort_by("path")
        todo = list(zip(*(todo[column].to_pylist() for column in KEY)))
        del found
        shard_size = math.ceil(shard_size / batch_size) * batch_size  # shards end on batch boundaries
        chunks = [todo[start : start + shard_size] for start in range(0, len(todo), shard_size)]
        with state.split_between_processes(chunks) as share:
            encoded = self._encode_shards(
                model, share, batch_size, num_workers, show_progress_bar and state.is_local_main_process
            )
        encoded = sum(gather_object([encoded])) if state.num_processes > 1 else encoded
        state.wait_for_everyone()
        if state.is_main_process:
            failures = self._commit(files_table(files), *self._reusable(include_index=not rebuild))
            warn_unreadable(failures)
            self.summary = {"images": len(self), "encoded": encoded, "reused": len(self) - encoded}
            self.summary["skipped"] = len(files) - len(self)
        state.wait_for_everyone()
        self._reopen()
        return self

    def _encode_shards(self, model, chunks, batch_size, num_workers, show_progress_bar) -> int:
        """Encode `chunks` (lists of `(path, size, mtime_ns)`), writing one shard of `work/` per chunk; the number of
        images encoded."""
        paths = [path for chunk in chunks for path, _, _ in chunk]
        batches = encode_files(model, self.root, paths, batch_size, show_progress_bar, num_workers)
        encoded = 0
        for chunk in chunks:
            rows = []
            while len(rows) < len(chunk):
                names, embeddings, taken, failures = next(batches)
                rows += [(name, embedding, when, "") for name, embedding, when in zip(names, embeddings, taken)]
                rows += [(name, np.zeros(self.dimension, np.float32), None, error) for name, error in failures]
                encoded += len(names)
            files = {path: (size, mtime) for path, size, mtime in chunk}
            rows.sort(key=lambda row: row[0])
            columns = {
                "path": [name for name, _, _, _ in rows],
                "size": [files[name][0] for name, _, _, _ in rows],
                "mtime_ns": [files[name][1] for name, _, _, _ in rows],
                "taken_ns": [files[name][1] if when is None else when for name, _, when, _ in rows],
                "embedding": [embedding for _, embedding, _, _ in rows],
                "error": [error for _, _, _, error in rows],
            }
            write_shard(self._work, columns, self.dimension, self.fingerprint)
        return encoded

    def commit_shards(self, lock_timeout: float = LOCK_TIMEOUT) -> ImageIndex:
        """Commit the shards in `work/` ([`write_shard`]: written by other processes or machines, copied there) with
        the rows already indexed, without scanning `root`: the index of exactly those images. Returns `self`."""
        with FileLock(self.folder / LOCK_FILE, timeout=lock_timeout):
            self._reopen()
            warn_unreadable(self._commit(None, *self._reusable(include_index=True)))
        return self

    def _reusable(self, include_index: bool) -> tuple[pa.Table, list[Path | None]]:
        """What needs no encoding, as one Arrow table sorted by path (`path`, `size`, `mtime_ns`, `taken_ns`, `error`
        ("": none), `source`, `row`: where its embedding is), a row per `(path, size, mtime_ns)` (the first source
        holding it), and the sources: `None` for this index's rows (when included), then the shards in `work/`
        written with this model. Kept in Arrow columns, not Python objects: tens of bytes an image."""
        columns = [*_row_features(), "error"]
        tables, sources = [], []

        def add(table: pa.Table, source: Path | None) -> None:
            if "error" not in table.column_names:
                table = table.append_column("error", pa.array([""] * len(table), pa.string()))
            table = table.select(columns).append_column("source", pa.array(np.full(len(table), len(sources), np.int32)))
            tables.append(table.append_column("row", pa.array(np.arange(len(table)))))
            sources.append(source)

        if include_index and len(self):
            add(self.dataset.with_format("arrow")[:], None)
        if (self._work / WORK_MODEL_FILE).is_file():
            written_by = json.loads((self._work / WORK_MODEL_FILE).read_text())["model_fingerprint"]
            for shard in sorted(self._work.glob("shard-*")) if written_by == self.fingerprint else []:
                add(datasets.load_from_disk(str(shard)).select_columns(columns).with_format("arrow")[:], shard)
        if not tables:
            return FOUND_SCHEMA.empty_table(), sources
        table = pa.concat_tables(tables)
        table = table.take(pc.sort_indices(table, [(name, "ascending") for name in [*KEY, "source"]]))
        same_path, same_size, same_mtime = (pc.equal(table[name][1:], table[name][:-1]) for name in KEY)
        repeated = pc.and_(pc.and_(same_path, same_size), same_mtime)  # the key of the row before: a later source
        return table.filter(pa.concat_arrays([pa.array([True]), *pc.invert(repeated).chunks])), sources

    def _commit(self, files: pa.Table | None, found: pa.Table, sources) -> list[tuple[str, str]]:
        """Write a new version of the index for `files` (a table of `path`, `size`, `mtime_ns`; `None`: all of
        `found`) from `found` and `sources` (see [`_reusable`]), then make it current; the unreadable files'
        `(path, error)`. The tables are let go as soon as they are used: at 10M images each copy is ~0.7 GB."""
        count = len(found if files is None else files)
        kept = found if files is None else found.join(files.select(KEY), keys=KEY, join_type="inner").sort_by("path")
        del found, files
        failed = pc.not_equal(kept["error"], "")
        failures = []
        if pc.any(failed).as_py():
            unreadable = kept.filter(failed)
            failures = list(zip(unreadable["path"].to_pylist(), unreadable["error"].to_pylist()))
            kept = kept.filter(pc.invert(failed))
        if not len(kept):
            raise ValueError(f"none of the {count} image files in {self.root} could be read")
        version = f"v-{uuid.uuid4().hex[:12]}"
        folder = self.folder / version
        folder.mkdir()
        write_embeddings(folder / EMBEDDINGS_FILE, self._gather(kept, sources), len(kept), self.dimension)
        rows = {column: kept[column] for column in _row_features()}
        num_images = len(kept)
        del kept
        with _quiet_datasets():
            datasets.Dataset.from_dict(rows, features=_row_features()).save_to_disk(str(folder / ROWS_FOLDER))
        del rows
        index_type, options = self._resolved_index(num_images)
        if index_type != "flat":
            embeddings = EmbeddingsFile(folder / EMBEDDINGS_FILE)
            options = {key: value for key, value in options.items() if key not in ("rerank", "max_index_memory")}
            index = train_faiss_index(make_faiss_index(index_type, self.dimension, num_images, **options), embeddings)
            for block in embeddings.blocks():
                index.add(block)
            faiss.write_index(index, str(folder / FAISS_FILE))
        _fsync_tree(folder)
        metadata = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "root": str(self.root),
            "model": self.model_name,
            "model_fingerprint": self.fingerprint,
            "index_type": self.index_type,
            "index_options": self.index_options,
            "faiss_index": index_type,
            "num_images": num_images,
            "dimension": self.dimension,
            "committed_shards": [shard.name for shard in sources if shard is not None],
        }
        _write_json(self.folder / METADATA_FILE, metadata)  # the commit: from here on the new version is current
        self._clean(metadata)
        self._reopen(metadata)
        return failures

    def _gather(self, kept: pa.Table, sources):
        """The embeddings of the `kept` rows (in order), `READ_BLOCK` rows at a time, read from their sources."""
        current = EmbeddingsFile(self.folder / self.version / EMBEDDINGS_FILE) if self.version else None
        source_of, row_of = kept["source"].to_numpy(), kept["row"].to_numpy()
        for start in range(0, len(kept), READ_BLOCK):
            block_sources, block_rows = source_of[start : start + READ_BLOCK], row_of[start : start + READ_BLOCK]
            embeddings = np.empty((len(block_rows), self.dimension), np.float32)
            for source in np.unique(block_sources):
                positions = np.flatnonzero(block_sources == source)
                rows = block_rows[positions]
                if sources[source] is None:
                    embeddings[positions] = current[rows]
                else:  # opened for this block only, so that its memory-mapped pages are let go
                    shard = datasets.load_from_disk(str(sources[source])).with_format("numpy", columns=["embedding"])
                    embeddings[positions] = shard[rows.tolist()]["embedding"]
            yield embeddings

    def _resolved_index(self, num_vectors: int) -> tuple[str, dict]:
        """The FAISS index type and options for `num_vectors` vectors (`auto`: [`choose_index`] for
        `max_index_memory`, explicit options kept)."""
        if self.index_type != "auto":
            return self.index_type, self.index_options
        if "max_index_memory" not in self.index_options:
            raise ValueError("index_type='auto' needs max_index_memory (bytes)")
        index_type, options = choose_index(num_vectors, self.dimension, int(self.index_options["max_index_memory"]))
        return index_type, {**options, **self.index_options}

    def _clean(self, metadata) -> None:
        """Remove what an interrupted writer left: versions other than the current one, unfinished shards, shards
        already committed. Call with the lock held."""
        current = metadata["version"] if metadata else None
        for path in self.folder.glob("v-*"):
            if path.name != current:
                shutil.rmtree(path)
        for path in self.folder.glob(f".{METADATA_FILE}.*.partial"):
            path.unlink()
        committed = set(metadata.get("committed_shards", [])) if metadata else set()
        for path in self._work.glob("*"):
            if path.name.startswith(".tmp-") or path.name in committed:
                shutil.rmtree(path)
        if self._work.is_dir() and not any(path.name.startswith("shard-") for path in self._work.iterdir()):
            shutil.rmtree(self._work)

    def _checked_model(self, model):
        """`model`, or the index's own; a model whose fingerprint differs from the index's is an error."""
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("this index has no model to encode with: load it with `ImageIndex.load(folder, model)`")
        if model is not self.model:
            fingerprint = model_fingerprint(model)
            if fingerprint != self.fingerprint:
                raise ModelMismatchError(
                    f"the index of {self.root} was built with another model ({self.model_name or 'unnamed'}, "
                    f"fingerprint {self.fingerprint[:12]}); this model's fingerprint is {fingerprint[:12]}. "
                    "Query it with the model that built it, or build a new index with this model."
                )
            self.model = model
        return model

    # ------------------------------------------------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------------------------------------------------

    def search(
        self, queries, k: int = 10, model=None, folder=None, taken_after=None, taken_before=None
    ) -> list[dict] | list[list[dict]]:
        """The `k` best images for each query: `[{"path": ..., "score": ...}, ...]` by decreasing cosine similarity.

        Queries are texts (`str`) or images (PIL images or `pathlib.Path`s); one query gives one list, a list of
        queries a list of lists. Filters (see [`search_embeddings`](#search_embeddings)): `folder`, `taken_after`,
        `taken_before`. A text and an image together: [`query_embedding`](#query_embedding).
        """
        single = isinstance(queries, (str, Path, Image.Image))
        queries = [queries] if single else list(queries)
        model = self._checked_model(model)
        if all(isinstance(query, str) for query in queries):
            embeddings = model.encode_text(queries)
        elif all(isinstance(query, (Path, Image.Image)) for query in queries):
            embeddings = model.encode_image(queries)
        else:
            raise TypeError("queries must be all texts (str) or all images (PIL images or pathlib.Path)")
        results = self.search_embeddings(embeddings, k, folder, taken_after, taken_before)
        return results[0] if single else results

    def query_embedding(self, text=None, image=None, image_weight: float = 0.5, model=None) -> np.ndarray:
        """The unit embedding of a text, an image (PIL image or path), or both: `(1 - image_weight) * text +
        image_weight * image`, normalised."""
        if text is None and image is None:
            raise ValueError("give a text, an image or both")
        if not 0 <= image_weight <= 1:
            raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
        model = self._checked_model(model)
        parts = []
        if text is not None:
            parts.append((1 - image_weight if image is not None else 1.0) * model.encode_text([text]).numpy())
        if image is not None:
            parts.append((image_weight if text is not None else 1.0) * model.encode_image([image]).numpy())
        embedding = np.sum(parts, axis=0, dtype=np.float32)
        return embedding / np.linalg.norm(embedding, axis=1, keepdims=True)

    def search_embeddings(
        self, embeddings, k: int = 10, folder=None, taken_after=None, taken_before=None
    ) -> list[list[dict]]:
        """The `k` best images for each row of `embeddings` (unit vectors of the model's space), among those under
        `folder` (relative to `root`) taken at or after `taken_after` and before `taken_before` (dates, datetimes or
        ISO strings, local time). Always `min(k, number of matching images)` hits: filters act inside the FAISS
        search, and an approximate search that finds fewer is completed by an exact one; compressed indexes re-score
        their best `rerank * k` candidates exactly."""
        queries = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dimension))
        mask = self._mask(folder, taken_after, taken_before)
        allowed = len(self) if mask is None else int(mask.sum())
        k = min(k, allowed)
        if k < 1:
            return [[] for _ in queries]
        if self.faiss_index is None or allowed <= min(EXACT_FILTER_MAX, len(self) // 2):
            scores, ids = self._exact(queries, k, mask)
        else:
            scores, ids = self._approximate(queries, k, mask)
        paths = self.dataset["path"] if len(self) <= READ_BLOCK else None
        return [
            [
                {
                    "path": str(self.root / original_path(paths[i] if paths else self.dataset[int(i)]["path"])),
                    "score": float(s),
                }
                for s, i in zip(row_scores, row_ids)
            ]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def _mask(self, folder, taken_after, taken_before) -> np.ndarray | None:
        """Which rows pass the filters (`None`: no filter), kept for the next queries with the same filters (a
        folder's mask costs a pass over every path: ~50 ms at 10M images)."""
        key = (folder, taken_after, taken_before)
        if key not in self._masks:
            if len(self._masks) >= MASKS_KEPT:
                self._masks.pop(next(iter(self._masks)))
            self._masks[key] = self._compute_mask(folder, taken_after, taken_before)
        return self._masks[key]

    def _compute_mask(self, folder, taken_after, taken_before) -> np.ndarray | None:
        mask = None
        if folder is not None:
            prefix = Path(folder).as_posix().strip("/")
            if prefix not in ("", "."):
                paths = self.dataset.with_format("arrow")["path"]
                mask = pc.starts_with(paths, prefix + "/").to_numpy(zero_copy_only=False)
        for bound, keep in ((taken_after, np.greater_equal), (taken_before, np.less)):
            if bound is not None:
                taken = self.dataset.with_format("arrow")["taken_ns"].to_numpy()  # a numpy column is read row by row
                passed = keep(taken, _timestamp_ns(bound))
                mask = passed if mask is None else mask & passed
        return mask

    def _exact(self, queries, k, mask=None):
        """Exact top-k `(scores, ids)` by scanning the memory-mapped embeddings (the rows where `mask` is true)."""
        ids_all = np.arange(len(self)) if mask is None else np.flatnonzero(mask)
        best_scores = np.full((len(queries), 0), -np.inf, np.float32)
        best_ids = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(ids_all), READ_BLOCK):
            ids = ids_all[start : start + READ_BLOCK]
            block = self.embeddings[ids[0] : ids[-1] + 1] if mask is None else self.embeddings[ids]
            scores = np.concatenate([best_scores, queries @ np.asarray(block).T], axis=1)
            candidates = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.indices(scores.shape)[1]
            best_scores = np.take_along_axis(scores, top, 1)
            best_ids = np.take_along_axis(candidates, top, 1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)

    def _approximate(self, queries, k, mask):
        """Top-k `(scores, ids)` from the FAISS index (restricted to `mask`), re-scored exactly for compressed
        indexes; queries with fewer than k hits are answered exactly."""
        rerank = self.index_options.get("rerank", RERANK if self._compressed else 0)
        allowed = len(self) if mask is None else int(mask.sum())
        fetch = min(allowed, k * rerank) if rerank else k
        parameters, _keep_alive = search_parameters(self.faiss_index, mask)
        scores, ids = self.faiss_index.search(queries, fetch, params=parameters)
        out_scores = np.empty((len(queries), k), np.float32)
        out_ids = np.empty((len(queries), k), np.int64)
        for row, (query, found, found_scores) in enumerate(zip(queries, ids, scores)):
            found, found_scores = found[found >= 0], found_scores[found >= 0]
            if len(found) < k:
                exact_scores, exact_ids = self._exact(query[None], k, mask)
                out_scores[row], out_ids[row] = exact_scores[0], exact_ids[0]
                continue
            if rerank:
                found = np.sort(found)  # read, not paged in: a page fault reads ahead ~128 KB around each 3 KB row
                found_scores = self._embeddings_file[found] @ query
            order = np.argsort(-found_scores, kind="stable")[:k]
            out_scores[row], out_ids[row] = found_scores[order], found[order]
        return out_scores, out_ids

    @property
    def _compressed(self) -> bool:
        return self._resolved_index(len(self))[0] in COMPRESSED_TYPES

    # ------------------------------------------------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Copy the index to another index folder (an existing index there is replaced the same crash-safe way a
        commit is: a new version, then `index.json`); saving to its own folder does nothing (updates commit)."""
        folder = Path(folder).resolve()
        if folder == self.folder:
            return folder
        check_index_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / LOCK_FILE, timeout=LOCK_TIMEOUT):
            copy = ImageIndex(
                folder, self.root, self.fingerprint, self.dimension, self.index_type, self.index_options, self.model
            )
            copy.model_name = self.model_name
            version = f"v-{uuid.uuid4().hex[:12]}"
            shutil.copytree(self.folder / self.version, folder / version)
            _fsync_tree(folder / version)
            metadata = {**read_metadata(self.folder), "version": version, "committed_shards": []}
            _write_json(folder / METADATA_FILE, metadata)
            copy._clean(metadata)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model=None) -> ImageIndex:
        """Open a saved index (memory-mapped); with `model`, check that it is the model that built the index (a
        [`ModelMismatchError`] if not). A damaged file is an [`IndexDamagedError`] naming it and the command that
        rebuilds."""
        folder = Path(folder)
        metadata = read_metadata(folder)
        index = cls(
            folder,
            metadata["root"],
            metadata["model_fingerprint"],
            metadata["dimension"],
            metadata["index_type"],
            metadata["index_options"],
            model_name=metadata["model"],
        )
        index._reopen(metadata)
        try:  # finish what an interrupted writer left, unless one is writing now or the folder is read-only
            with FileLock(folder / LOCK_FILE, timeout=0):
                index._clean(read_metadata(folder))
        except (Timeout, OSError):
            pass
        if model is not None:
            index._checked_model(model)
        return index

    def _reopen(self, metadata=None) -> None:
        """Open the version `index.json` names (when it is not the one open already)."""
        metadata = metadata or read_metadata(self.folder, missing_ok=True)
        if metadata is None or metadata["version"] == self.version:
            return
        version = self.folder / metadata["version"]
        dataset = _read(self, version / ROWS_FOLDER, lambda path: datasets.load_from_disk(str(path)))
        embeddings_file = _read(self, version / EMBEDDINGS_FILE, EmbeddingsFile)
        if embeddings_file.shape != (len(dataset), self.dimension):
            _damaged(self, version / EMBEDDINGS_FILE, f"shape {embeddings_file.shape}, expected {len(dataset)} rows")
        faiss_index = None
        if metadata.get("faiss_index", "flat") != "flat":
            faiss_index = _read(self, version / FAISS_FILE, lambda path: faiss.read_index(str(path)))
            if faiss_index.ntotal != len(dataset):
                _damaged(self, version / FAISS_FILE, f"{faiss_index.ntotal} vectors, expected {len(dataset)}")
        self.dataset, self._embeddings_file, self.faiss_index = dataset, embeddings_file, faiss_index
        self._masks = {}
        self.version = metadata["version"]
        self.index_type, self.index_options = metadata["index_type"], metadata["index_options"]


def _timestamp_ns(value) -> int:
    """A date, datetime or ISO string (naive: local time) in ns since the epoch."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return int(value.timestamp() * 10**9)


def rebuild_command(folder, root="IMAGES", model="MODEL") -> str:
    return f"python -m viclip_ot.search index --rebuild --model {model} --images {root} --output {folder}"


def _damaged(index, path, problem):
    raise IndexDamagedError(
        f"{path} is damaged ({problem}); rebuild the index with `{rebuild_command(index.folder, index.root)}`"
    )


def _read(index, path, reader):
    """`reader(path)`, a damaged or missing file being an [`IndexDamagedError`] naming it."""
    try:
        return reader(path)
    except DAMAGED as error:
        _damaged(index, path, f"{type(error).__name__}: {error}")


def read_metadata(folder: str | Path, missing_ok: bool = False) -> dict | None:
    """The `index.json` of an index folder (`None` when missing and `missing_ok`)."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{folder} is no image index: {path} is missing")
    try:
        metadata = json.loads(path.read_text())
        if not isinstance(metadata, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        raise IndexDamagedError(
            f"{path} is damaged ({type(error).__name__}: {error}); rebuild the index with `{rebuild_command(folder)}`"
        ) from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} has index format {metadata.get('format_version')}, expected {FORMAT_VERSION}: rebuild it with "
            f"`{rebuild_command(folder, metadata.get('root', 'IMAGES'))}`"
        )
    missing = {"version", "root", "model_fingerprint", "dimension", "index_type", "index_options"} - set(metadata)
    if missing:
        raise IndexDamagedError(
            f"{path} is damaged (no {', '.join(sorted(missing))}); rebuild the index with "
            f"`{rebuild_command(folder, metadata.get('root', 'IMAGES'))}`"
        )
    return metadata


def check_index_folder(folder: str | Path, rebuild: bool = False) -> None:
    """Refuse to write an index into an existing folder that is no index (or whose `index.json` is gone), before
    any encoding; an index folder, or one left by an interrupted first run (only `work/`), is fine, and with
    `rebuild` any folder holding only what an index holds."""
    folder = Path(folder)
    if not folder.exists() or ((folder / METADATA_FILE).is_file() and not rebuild):
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is no folder: choose another output")
    names = {path.name for path in folder.iterdir()} - {LOCK_FILE}
    if rebuild:
        ours = all(
            name in (WORK_FOLDER, METADATA_FILE) or name.startswith(("v-", f".{METADATA_FILE}")) for name in names
        )
    else:
        ours = WORK_FOLDER in names and all(name == WORK_FOLDER or name.startswith("v-") for name in names)
    if names and not ours:
        raise FileExistsError(
            f"{folder} exists and holds no image index ({METADATA_FILE} is missing): choose another output, "
            f"pass --rebuild to index it again from scratch, or delete {folder}"
        )


@contextmanager
def _quiet_datasets():
    """No `datasets` progress bars (one per shard saved) inside the block."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def write_shard(work: Path, rows: dict, dim: int, fingerprint: str) -> Path:
    """Write one shard of rows encoded by the model with `fingerprint` (columns of [`_shard_features`]) into the
    folder `work` (an index's `work/`) atomically: a `datasets` dataset saved to a temporary folder, then renamed
    `shard-*`. Shards written by another model are ignored. `rows["embedding"]`: an `(n, dim)` array (or n
    vectors), handed to Arrow as one buffer."""
    vectors = np.ascontiguousarray(rows["embedding"], np.float32).reshape(-1)
    rows = {**rows, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors), dim)}
    work.mkdir(parents=True, exist_ok=True)
    if not (work / WORK_MODEL_FILE).is_file():
        _write_json(work / WORK_MODEL_FILE, {"model_fingerprint": fingerprint})
    temporary = work / f".tmp-{uuid.uuid4().hex[:12]}"
    with _quiet_datasets():
        datasets.Dataset.from_dict(rows, features=_shard_features(dim)).save_to_disk(str(temporary))
    _fsync_tree(temporary)
    shard = work / f"shard-{uuid.uuid4().hex[:12]}"
    os.rename(temporary, shard)
    return shard


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes of a size such as `4G`, `512MiB`, `2e9`."""
    match = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4G, 512M)")
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2] or " "))


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m viclip_ot.search", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="index (or update the index of) a folder of images")
    index.add_argument("--model", required=True, help="saved ViCLIP-OT model (folder or Hub id)")
    index.add_argument("--images", required=True, help="folder of images, walked recursively (a new one re-points)")
    index.add_argument("--output", required=True, help="index folder; an existing index is updated")
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument(
        "--index-type",
        choices=INDEX_TYPES,
        help="flat: exact; ivf/hnsw: approximate; ivfpq/opq: compressed, re-ranked exactly; auto: chosen for "
        "--max-index-memory (default: the existing index's type, else flat)",
    )
    index.add_argument("--max-index-memory", type=parse_size, help="memory budget of the index (e.g. 4G): sets auto")
    index.add_argument("--nlist", type=int, help="ivf/ivfpq/opq: number of cells (default sqrt(n))")
    index.add_argument("--nprobe", type=int, help="cells searched per query (default ivf: nlist / 8, ivfpq/opq: / 4)")
    index.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 32)")
    index.add_argument("--ef-search", type=int, help="hnsw: search breadth (default 64)")
    index.add_argument("--pq-m", type=int, help="ivfpq/opq: 4-bit sub-quantisers (default dim / 12: dim / 24 bytes)")
    index.add_argument("--hnsw-coarse", action="store_true", default=None, help="ivfpq/opq: find cells by HNSW")
    index.add_argument("--rerank", type=int, help=f"candidates per hit re-scored exactly (compressed: {RERANK})")
    index.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes")
    index.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="images per shard written as it goes")
    index.add_argument("--rebuild", action="store_true", help="re-encode everything (a damaged index)")
    index.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT, help="seconds to wait for another writer")
    index.add_argument("--json", action="store_true", help='print {"images", "encoded", "reused", "skipped"}')
    query = commands.add_parser("query", help="search an index by text, by image, or both")
    query.add_argument("--index", required=True, help="index folder made by `index`")
    query.add_argument("--text", help="a description (Vietnamese)")
    query.add_argument("--image", type=Path, help="an image to find similar ones to")
    query.add_argument("--image-weight", type=float, default=0.5, help="with --text and --image: the image's weight")
    query.add_argument("--folder", help="only images under this folder (relative to the indexed one)")
    query.add_argument("--taken-after", help="only images taken at or after this date (YYYY-MM-DD[THH:MM])")
    query.add_argument("--taken-before", help="only images taken before this date")
    query.add_argument("--model", help="model to encode the query (default: the one recorded in the index)")
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--json", action="store_true", help='print [{"path": ..., "score": ...}, ...]')
    for command in (index, query):
        command.add_argument(
            "--backend",
            choices=ENCODE_BACKENDS,
            default="auto",
            help="encoding: auto = bf16 where the CPU or GPU has it natively, else fp32; onnx-int8 = int8 towers in "
            "ONNX Runtime (pip install 'viclip-ot[fast]'); torch = fp32",
        )
    args = parser.parse_args(argv)
    if args.command == "query":
        if args.text is not None and not args.text.strip():
            parser.error("--text is empty: give a description to search for")
        if args.top_k < 1:
            parser.error(f"--top-k must be at least 1, got {args.top_k}")
        if args.image is not None:
            try:  # reads the header only: not an image, or more pixels than PIL's decompression-bomb limit
                Image.open(args.image).close()
            except UNREADABLE as error:
                parser.error(f"--image {args.image} cannot be read as an image: {error}")
    return args


def run_index(args) -> None:
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # `accelerate launch --cpu` sets it
    names = ("nlist", "nprobe", "hnsw_m", "ef_search", "pq_m", "hnsw_coarse", "rerank", "max_index_memory")
    options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    index_type = "auto" if args.max_index_memory and not args.index_type else args.index_type
    output, images = Path(args.output), Path(args.images).resolve()
    check_index_folder(output, args.rebuild)  # before loading the model and encoding anything
    metadata = None if args.rebuild else read_metadata(output, missing_ok=True)
    model = load_model(args.model, state.device)
    model.encode_backend = args.backend
    workers = max(0, args.workers // state.num_processes)
    if metadata is not None:
        index = ImageIndex.load(output, model)
        if index.root != images:
            if state.is_main_process:
                print(f"re-pointing {output} from {index.root} to {images}", file=sys.stderr)
            index.root = images
        if index_type and index_type != index.index_type:
            index.index_type, index.index_options = index_type, options
        else:  # the index's type and options, with the ones given replaced
            index.index_options.update(options)
    else:
        index = ImageIndex(
            output,
            images,
            model_fingerprint(model),
            model.config.projection_dim,
            index_type or "flat",
            options,
            model,
            model.name_or_path,
        )
    index.update(
        batch_size=args.batch_size,
        num_workers=workers,
        shard_size=args.shard_size,
        rebuild=args.rebuild,
        lock_timeout=args.lock_timeout,
    )
    if state.is_main_process:
        if args.json:
            print(json.dumps(index.summary))
        else:
            print(f"indexed {len(index)} images of {images} in {output} ({json.dumps(index.summary)})")


def run_query(args) -> None:
    metadata_file = Path(args.index) / METADATA_FILE
    if not metadata_file.is_file():
        raise FileNotFoundError(f"{args.index} is no image index: {metadata_file} is missing")
    if args.text is None and args.image is None:
        raise ValueError("give --text, --image or both")
    model_name = args.model or read_metadata(args.index)["model"]
    if not model_name:
        raise ValueError(f"{args.index} does not record its model: pass --model")
    try:
        model = load_model(model_name)
    except (OSError, ValueError) as error:
        if args.model:
            raise
        raise FileNotFoundError(
            f"{args.index} was built with the model {model_name}, which cannot be loaded ({error}): pass --model"
        ) from error
    index = ImageIndex.load(args.index, model)  # checks the model's fingerprint before any query
    index.model.encode_backend = args.backend
    text = args.text.strip() if args.text is not None else None
    embedding = index.query_embedding(text, args.image, args.image_weight)
    filters = {"folder": args.folder, "taken_after": args.taken_after, "taken_before": args.taken_before}
    hits = index.search_embeddings(embedding, k=args.top_k, **filters)[0]
    sys.stdout.reconfigure(errors="surrogateescape")  # a non-UTF-8 file name is printed as its bytes
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=2))
        return
    width = max([len("path")] + [len(hit["path"]) for hit in hits])
    print(f"{'rank':>4}  {'score':>7}  {'path':<{width}}")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit['score']:>7.4f}  {hit['path']:<{width}}")


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run(run_index if args.command == "index" else run_query, args, "python -m viclip_ot.search")


if __name__ == "__main__":
    main()
