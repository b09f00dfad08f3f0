"""Search a folder of photos by Vietnamese text or by a similar image.

An [`ImageIndex`] holds one L2-normalised embedding per image (with the file's path, size and modification time) as a
`datasets` dataset with a FAISS inner-product index attached, and the fingerprint of the model that made them.

```
python -m viclip_ot.search index --model MODEL --images DIR --output INDEX [--index-type flat|ivf|hnsw]
python -m viclip_ot.search query --index INDEX --text "con mèo nằm trên ghế" [--top-k 5] [--json]
```

Re-running `index` with the same output encodes only new or changed files and drops deleted ones; with
`accelerate launch --num_processes N -m viclip_ot.search index ...` each process encodes a share of the files.
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
import uuid
import warnings
from pathlib import Path

import datasets
import faiss
import numpy as np
from accelerate import PartialState
from accelerate.utils import gather_object, parse_flag_from_env
from PIL import Image
from tqdm.auto import tqdm

from modeling_viclip_ot import ENCODE_BACKENDS, model_fingerprint
from processing_viclip_ot import PHOTOS_EXTRA, PLUGIN_EXTENSIONS

from .cli import run
from .loading import load_model

INDEX_TYPES = ("flat", "ivf", "hnsw")
METADATA_FILE = "index.json"
ROWS_FOLDER = "images"
FAISS_FILE = "embeddings.faiss"
FORMAT_VERSION = 1
WARN_EXAMPLES = 5  # unreadable files named in the warning
TRAIN_POINTS_PER_CELL = 64  # IVF k-means sample size per cell
# Exceptions PIL raises for a file it cannot decode (truncated, corrupt, not an image, too large).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


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


def make_faiss_index(
    index_type: str,
    dim: int,
    num_vectors: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 64,
) -> faiss.Index:
    """An empty inner-product FAISS index (cosine similarity of unit vectors).

    - `flat`: exact search.
    - `ivf`: `nlist` k-means cells (default `sqrt(n)`, at most n / 39), `nprobe` of them searched per query
      (default `nlist / 8`); it must be trained ([`train_faiss_index`]).
    - `hnsw`: a graph with `hnsw_m` links per node, built with `ef_construction` and searched with `ef_search`.
    """
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        nlist = nlist or max(1, min(round(math.sqrt(num_vectors)), num_vectors // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nlist, nprobe or max(1, nlist // 8))
        return index
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index
    raise ValueError(f"index_type={index_type!r} is not supported; choose one of {', '.join(INDEX_TYPES)}")


def train_faiss_index(index: faiss.Index, vectors) -> faiss.Index:
    """Train an IVF index's k-means on a random sample of up to `TRAIN_POINTS_PER_CELL` vectors per cell
    (`vectors`: an array, or a `datasets` column formatted as numpy); other indexes need no training."""
    if not index.is_trained:
        sample = np.random.default_rng(0).permutation(len(vectors))[: TRAIN_POINTS_PER_CELL * index.nlist]
        index.train(np.ascontiguousarray(vectors[np.sort(sample)], dtype=np.float32))
    return index


def add_faiss_index(
    dataset: datasets.Dataset, index_type: str = "flat", column: str = "embedding", **index_options
) -> datasets.Dataset:
    """Attach a trained [`make_faiss_index`] index of `dataset[column]` (named `column`) through `datasets`' FAISS
    integration, which adds the vectors."""
    index = make_faiss_index(index_type, dataset.features[column].length, len(dataset), **index_options)
    train_faiss_index(index, dataset.with_format("numpy", columns=[column])[:][column])
    return dataset.add_faiss_index(column, custom_index=index, metric_type=faiss.METRIC_INNER_PRODUCT)


def encode_files(model, root: Path, paths: list[str], batch_size: int = 32, show_progress_bar: bool = True):
    """Embeddings of the readable files among `paths` (relative to `root`): `(kept paths, float32 array, failures)`
    where `failures` lists `(path, error)` of the files that could not be decoded."""
    kept, chunks, failures = [], [], []
    with tqdm(total=len(paths), desc="encoding images", unit="image", disable=not show_progress_bar) as progress:
        for start in range(0, len(paths), batch_size):
            images, names = [], []
            for name in paths[start : start + batch_size]:
                try:
                    images.append(model.processor.image_processor.load(root / name))
                    names.append(name)
                except UNREADABLE as error:
                    failures.append((name, f"{type(error).__name__}: {error}"))
            if images:
                chunks.append(model.encode_image(images, batch_size=len(images)).numpy())
                kept.extend(names)
            progress.update(len(paths[start : start + batch_size]))
    dim = model.config.projection_dim
    return kept, np.concatenate(chunks) if chunks else np.empty((0, dim), np.float32), failures


def warn_unreadable(failures: list[tuple[str, str]]) -> None:
    """One warning counting the unreadable files and naming the first few."""
    if failures:
        examples = "; ".join(f"{path} ({error})" for path, error in failures[:WARN_EXAMPLES])
        more = f"; and {len(failures) - WARN_EXAMPLES} more" if len(failures) > WARN_EXAMPLES else ""
        warnings.warn(f"skipped {len(failures)} unreadable image file(s): {examples}{more}", stacklevel=3)


class ImageIndex:
    """Embeddings of the images under `root`, searchable by text or by image with FAISS.

    Build one with [`ImageIndex.build`], refresh it with [`update`](#update), query it with [`search`](#search),
    and keep it with [`save`](#save) / [`ImageIndex.load`].

    Attributes:
        dataset (`datasets.Dataset`): columns `path` (relative to `root`), `size`, `mtime_ns` and `embedding`, sorted
            by path, with the FAISS index `"embedding"` attached.
        root (`Path`): the indexed folder.
        fingerprint (`str`): [`model_fingerprint`] of the model that made the embeddings.
        index_type (`str`), index_options (`dict`): how the FAISS index is built (see [`make_faiss_index`]).
        model: the model that encodes queries (`None` for an index loaded without one).
    """

    def __init__(self, dataset, root, fingerprint, index_type="flat", index_options=None, model=None, model_name=""):
        self.dataset = dataset
        self.root = Path(root).resolve()
        self.fingerprint = fingerprint
        self.index_type = index_type
        self.index_options = dict(index_options or {})
        self.model = model
        self.model_name = model_name

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def paths(self) -> list[Path]:
        """Absolute paths of the indexed images, in the dataset's order."""
        return [self.root / original_path(path) for path in self.dataset["path"]]

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
        **index_options,
    ) -> ImageIndex:
        """Encode every image under `folder` (recursively) with `model`. Unreadable files are skipped with one
        warning; a folder without readable images is an error. Under `accelerate launch` each process encodes a
        share and every process gets the whole index."""
        features = _features(model.config.projection_dim)
        empty = datasets.Dataset.from_dict({column: [] for column in features}, features=features)
        index = cls(empty, folder, model_fingerprint(model), index_type, index_options, model, model.name_or_path)
        return index.update(batch_size=batch_size, show_progress_bar=show_progress_bar)

    def update(self, model=None, batch_size: int = 32, show_progress_bar: bool = True) -> ImageIndex:
        """Rescan `root`: encode new and changed files (by size and modification time), drop deleted ones and rebuild
        the FAISS index; the result equals a freshly built index. Returns `self`."""
        model = self._checked_model(model)
        files = scan_images(self.root)
        if not files:
            raise ValueError(f"no image files in {self.root} (looked for {', '.join(sorted(image_extensions()))})")
        current = set(files)
        indexed = zip(map(original_path, self.dataset["path"]), self.dataset["size"], self.dataset["mtime_ns"])
        unchanged = {path: row for row, (path, size, mtime) in enumerate(indexed) if (path, size, mtime) in current}
        todo = [path for path, _, _ in files if path not in unchanged]

        state = PartialState()
        with state.split_between_processes(todo) as share:
            encoded = encode_files(
                model, self.root, share, batch_size, show_progress_bar and state.is_local_main_process
            )
        shares = gather_object([encoded])
        embeddings = dict(zip([p for kept, _, _ in shares for p in kept], np.concatenate([e for _, e, _ in shares])))
        if state.is_main_process:
            warn_unreadable([failure for _, _, failures in shares for failure in failures])

        old_embeddings = self.dataset.with_format("numpy", columns=["embedding"])[:]["embedding"]
        rows = {"path": [], "size": [], "mtime_ns": [], "embedding": []}
        for path, size, mtime in files:
            if path in unchanged:
                embedding = old_embeddings[unchanged[path]]
            elif path in embeddings:
                embedding = embeddings[path]
            else:  # unreadable
                continue
            for column, value in zip(rows, (storable_path(path), size, mtime, embedding)):
                rows[column].append(value)
        if not rows["path"]:
            raise ValueError(f"none of the {len(files)} image files in {self.root} could be read")
        rows["embedding"] = np.stack(rows["embedding"]).astype(np.float32)
        dataset = datasets.Dataset.from_dict(rows, features=_features(rows["embedding"].shape[1]))
        self.dataset = add_faiss_index(dataset, self.index_type, **self.index_options)
        return self

    def _checked_model(self, model):
        """`model`, or the index's own; a model whose fingerprint differs from the index's is an error."""
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("this index has no model to encode with: load it with `ImageIndex.load(folder, model)`")
        if model is not self.model:
            fingerprint = model_fingerprint(model)
            if fingerprint != self.fingerprint:
                raise ValueError(
                    f"the index of {self.root} was built with another model ({self.model_name or 'unnamed'}, "
                    f"fingerprint {self.fingerprint[:12]}); this model's fingerprint is {fingerprint[:12]}. "
                    "Query it with the model that built it, or build a new index with this model."
                )
            self.model = model
        return model

    # ------------------------------------------------------------------------------------------------------------
    # Searching
    # ------------------------------------------------------------------------------------------------------------

    def search(self, queries, k: int = 10, model=None) -> list[dict] | list[list[dict]]:
        """The `k` best images for each query: `[{"path": ..., "score": ...}, ...]` by decreasing cosine similarity.

        Queries are texts (`str`) or images (PIL images or `pathlib.Path`s); one query gives one list, a list of
        queries a list of lists.
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
        results = self.search_embeddings(embeddings, k)
        return results[0] if single else results

    def search_embeddings(self, embeddings, k: int = 10) -> list[list[dict]]:
        """The `k` best images for each row of `embeddings` (unit vectors of the model's space)."""
        queries = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32).reshape(-1, self.dimension))
        scores, examples = self.dataset.get_nearest_examples_batch("embedding", queries, k=k)
        return [
            [
                {"path": str(self.root / original_path(path)), "score": float(score)}
                for path, score in zip(found["path"], found_scores)
            ]
            for found_scores, found in zip(scores, examples)
        ]

    @property
    def dimension(self) -> int:
        return self.dataset.features["embedding"].length

    # ------------------------------------------------------------------------------------------------------------
    # Saving and loading
    # ------------------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the index to `folder` atomically: into a temporary sibling folder that then replaces `folder`, so an
        interrupted save leaves the previous index (or nothing) in place."""
        folder = Path(folder).resolve()
        folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            temporary.mkdir()
            self.dataset.save_faiss_index("embedding", temporary / FAISS_FILE)
            self.dataset.drop_index("embedding")  # `save_to_disk` refuses a dataset with an attached index
            try:
                self.dataset.save_to_disk(str(temporary / ROWS_FOLDER))
            finally:
                self.dataset.load_faiss_index("embedding", temporary / FAISS_FILE)
            metadata = {
                "format_version": FORMAT_VERSION,
                "root": str(self.root),
                "model": self.model_name,
                "model_fingerprint": self.fingerprint,
                "index_type": self.index_type,
                "index_options": self.index_options,
                "num_images": len(self),
                "dimension": self.dimension,
            }
            (temporary / METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))
            if folder.exists():
                if not (folder / METADATA_FILE).is_file():
                    raise FileExistsError(f"{folder} exists and is no image index: not overwriting it")
                previous = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
                folder.rename(previous)
                temporary.rename(folder)
                shutil.rmtree(previous)
            else:
                temporary.rename(folder)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: str | Path, model=None) -> ImageIndex:
        """Load a saved index; with `model`, check that it is the model that built the index (clear error if not)."""
        folder = Path(folder)
        metadata_file = folder / METADATA_FILE
        if not metadata_file.is_file():
            raise FileNotFoundError(f"{folder} is no image index: {metadata_file} is missing")
        metadata = json.loads(metadata_file.read_text())
        if metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder} has index format {metadata.get('format_version')}, expected {FORMAT_VERSION}")
        dataset = datasets.load_from_disk(str(folder / ROWS_FOLDER))
        dataset.load_faiss_index("embedding", folder / FAISS_FILE)
        index = cls(
            dataset,
            metadata["root"],
            metadata["model_fingerprint"],
            metadata["index_type"],
            metadata["index_options"],
            model_name=metadata["model"],
        )
        if model is not None:
            index._checked_model(model)
        return index


def _features(dim: int) -> datasets.Features:
    return datasets.Features(
        {
            "path": datasets.Value("string"),
            "size": datasets.Value("int64"),
            "mtime_ns": datasets.Value("int64"),
            "embedding": datasets.List(datasets.Value("float32"), length=dim),
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m viclip_ot.search", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="index (or update the index of) a folder of images")
    index.add_argument("--model", required=True, help="saved ViCLIP-OT model (folder or Hub id)")
    index.add_argument("--images", required=True, help="folder of images, walked recursively")
    index.add_argument("--output", required=True, help="index folder; an existing index is updated")
    index.add_argument("--batch-size", type=int, default=32)
    index.add_argument("--index-type", choices=INDEX_TYPES, default="flat", help="flat: exact; ivf/hnsw: approximate")
    index.add_argument("--nlist", type=int, help="ivf: number of cells (default sqrt(n))")
    index.add_argument("--nprobe", type=int, help="ivf: cells searched per query (default nlist / 8)")
    index.add_argument("--hnsw-m", type=int, help="hnsw: links per node (default 32)")
    index.add_argument("--ef-search", type=int, help="hnsw: search breadth (default 64)")
    query = commands.add_parser("query", help="search an index by text or by image")
    query.add_argument("--index", required=True, help="index folder made by `index`")
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a description (Vietnamese)")
    what.add_argument("--image", type=Path, help="an image to find similar ones to")
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
    model = load_model(args.model, state.device)
    model.encode_backend = args.backend
    options = {
        key: value
        for key, value in {
            "nlist": args.nlist,
            "nprobe": args.nprobe,
            "hnsw_m": args.hnsw_m,
            "ef_search": args.ef_search,
        }.items()
        if value is not None
    }
    images = Path(args.images).resolve()
    if (Path(args.output) / METADATA_FILE).is_file():
        index = ImageIndex.load(args.output, model)
        if index.root != images:
            raise ValueError(f"{args.output} indexes {index.root}, not {images}: choose another --output")
        index.index_type, index.index_options = args.index_type, options
        index.update(batch_size=args.batch_size)
    else:
        index = ImageIndex.build(model, images, args.batch_size, args.index_type, **options)
    if state.is_main_process:
        index.save(args.output)
        print(f"indexed {len(index)} images of {images} in {args.output}")


def run_query(args) -> None:
    metadata_file = Path(args.index) / METADATA_FILE
    if not metadata_file.is_file():
        raise FileNotFoundError(f"{args.index} is no image index: {metadata_file} is missing")
    model_name = args.model or json.loads(metadata_file.read_text())["model"]
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
    hits = index.search(args.text.strip() if args.text is not None else args.image, k=args.top_k)
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
