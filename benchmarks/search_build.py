"""Image index built from shards at scale: build time, peak memory, size, query latency and recall, filtered queries.

`n` synthetic 768-d unit vectors (`--data`: "latent", a random 32-d subspace plus 10 % noise, or "clustered", `n /
100` centres plus noise of norm 1.5, both generated as in `benchmarks/search.py`) are written as the shards `index`
writes (`write_shard`, 16,384 rows each), then a fresh process commits them (`ImageIndex.commit_shards`: embeddings
copied into one `.npy`, FAISS trained on a sample and filled block by block) and reports its build seconds and peak
resident memory (VmHWM) and peak anonymous memory (RssAnon, sampled). Queries (one at a time, p50 / p99 over
`--queries`) go through `ImageIndex.search_embeddings` (re-ranking included), for each `--nprobe` x `--rerank`
setting of the one index built, twice: first with the embeddings file's pages evicted from the page cache
(`posix_fadvise`), so that every re-ranked row is read from the disk, as for a collection larger than the memory,
then again with those rows cached (a filter answered exactly, such as the week, scans its rows through the index's
memory map, whose pages cannot be evicted while mapped: from the second setting on its rows are cached in both);
recall@10 is the overlap with the exact top 10 of the same filter (a scan of the memory-mapped embeddings).
Filtered queries: the images under one folder (a quarter of them) and the images of one week (about 0.2 %).

    python benchmarks/search_build.py --sizes 100000 1000000      # writes benchmarks/results/search-build.md
    python benchmarks/search_build.py --sizes 1000000 --data clustered --output OTHER.md
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np
from _measure import environment, load_average, markdown_table, run_worker, write_results
from search import DIM, LATENT_DIM, latent_unit_vectors, unit_vectors

from viclip_ot.search import EMBEDDINGS_FILE, FAISS_FILE, ImageIndex, write_shard

RESULTS = Path(__file__).parent / "results" / "search-build.md"
SHARD = 16_384
DAY = 86_400 * 10**9
START = int(datetime(2015, 1, 1).timestamp()) * 10**9


def sampler(data, size, rng, noise=1.5):
    """A function drawing `count` vectors of the collection's distribution (`data`: "latent" or "clustered")."""
    if data == "latent":
        mixing = rng.standard_normal((LATENT_DIM, DIM), dtype=np.float32)
        return lambda count: latent_unit_vectors(count, mixing, rng)
    centres = rng.standard_normal((max(1, size // 100), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return lambda count: unit_vectors(count, centres, noise, rng)


def write_shards(folder: Path, count: int, draw) -> float:
    """Write the shards of `count` vectors from `draw` (4 folders, one image every `10 years / count`); seconds."""
    step = 3650 * DAY // count
    start = time.perf_counter()
    for first in range(0, count, SHARD):
        rows = min(SHARD, count - first)
        vectors = draw(rows)
        ids = range(first, first + rows)
        shard = {
            "path": [f"folder{row % 4}/{row:09d}.jpg" for row in ids],
            "size": [1000 + row for row in ids],
            "mtime_ns": [START + row * step for row in ids],
            "taken_ns": [START + row * step for row in ids],
            "embedding": vectors,
            "error": [""] * rows,
        }
        write_shard(folder / "work", shard, DIM, "synthetic")
    return time.perf_counter() - start


def memory_kb(field):
    """A field of /proc/self/status (VmHWM, RssAnon, ...) in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def commit(folder: str, index_type: str, options: str) -> None:
    """Worker: commit the shards, print build seconds and peak memory as JSON: all resident pages (VmHWM, which
    counts the file pages of the memory-mapped embeddings the kernel keeps resident) and the anonymous ones (RssAnon
    sampled every 10 ms: what the build itself holds)."""
    peak_anon, done = [0], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak_anon[0] = max(peak_anon[0], memory_kb("RssAnon"))

    sampler_thread = threading.Thread(target=sample, daemon=True)
    sampler_thread.start()
    start = time.perf_counter()
    ImageIndex(folder, folder + "/photos", "synthetic", DIM, index_type, json.loads(options)).commit_shards()
    seconds = time.perf_counter() - start
    done.set()
    sampler_thread.join()
    print(json.dumps({"seconds": seconds, "peak": memory_kb("VmHWM") * 1024, "peak_anon": peak_anon[0] * 1024}))


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (it is on disk, flushed), so that the next reads go to the disk;
    pages mapped into this process (a live memory map that touched them) stay."""
    file = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(file, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(file)


def latency(index, queries, **filters):
    """p50 and p99 ms of single queries, first with the embeddings' pages evicted (each re-ranked row read from the
    disk), then again (the same rows now in the page cache); and the top-10 paths."""
    passes = []
    for cold in (True, False):
        if cold:
            evict(Path(index.folder) / index.version / EMBEDDINGS_FILE)
        times, found = [], []
        for query in queries:
            start = time.perf_counter()
            hits = index.search_embeddings(query[None], 10, **filters)[0]
            times.append(time.perf_counter() - start)
            found.append([hit["path"] for hit in hits])
        passes.append(f"{1000 * np.percentile(times, 50):.1f} / {1000 * np.percentile(times, 99):.1f}")
    return passes, found


def measure(size, data, index_type, options, args, rng):
    """Build one index of `size` vectors, then measure each search setting (nprobe x rerank) with each filter."""
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        draw = sampler(data, size, rng)
        write_seconds = write_shards(Path(work), size, draw)
        built = run_worker(__file__, ["--commit", work, index_type, json.dumps(options)])
        index = ImageIndex.load(work)
        version = Path(work) / index.version
        disk = sum(path.stat().st_size for path in version.rglob("*") if path.is_file()) / 2**30
        faiss_size = (version / FAISS_FILE).stat().st_size / 2**30 if (version / FAISS_FILE).exists() else 0.0
        queries = draw(args.queries)
        week = (datetime(2020, 6, 1), datetime(2020, 6, 8))
        filters = [("none", {}), ("folder (25 %)", {"folder": "folder1"})]
        filters.append(("one week (~0.2 %)", {"taken_after": week[0], "taken_before": week[1]}))
        exact = ImageIndex.load(work)
        exact.faiss_index = None  # the exact answer: a scan of all rows
        truths = {
            name: [[hit["path"] for hit in hits] for hits in exact.search_embeddings(queries, 10, **where)]
            for name, where in filters
        }
        del exact  # its memory map goes: pages mapped into a process cannot be evicted (see `evict`)
        settings = [{}]
        if index_type in ("ivfpq", "opq"):
            settings = [{"nprobe": nprobe, "rerank": rerank} for nprobe in args.nprobe for rerank in args.rerank]
        rows = []
        for setting in settings:
            if setting:  # search-time settings of the loaded index, as a user would change them
                faiss.extract_index_ivf(index.faiss_index).nprobe = setting["nprobe"]
                index.index_options["rerank"] = setting["rerank"]
            for name, where in filters:
                (cold, warm), found = latency(index, queries, **where)
                truth = truths[name]
                recall = np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(found, truth)])
                all_k = all(len(a) == len(b) for a, b in zip(found, truth))
                rows.append(
                    [
                        f"{size:,}",
                        data,
                        index_type,
                        json.dumps({**options, **setting}) if options or setting else "",
                        name,
                        f"{write_seconds:.0f}",
                        f"{built['seconds']:.0f}",
                        f"{built['peak'] / 2**30:.2f} / {built['peak_anon'] / 2**30:.2f}",
                        f"{disk:.2f} / {faiss_size:.3f}",
                        cold,
                        warm,
                        f"{recall:.3f}",
                        "yes" if all_k else "no",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
        return rows


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--commit":
        return commit(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data", nargs="+", choices=["latent", "clustered"], default=["latent"])
    parser.add_argument("--types", nargs="+", default=["ivfpq"], help="index types (opq trains slowly at 768-d)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[256], help="cells searched (each one measured)")
    parser.add_argument("--pq-m", type=int, help="PQ sub-quantisers (default: the index's own, dim / 12)")
    parser.add_argument("--nlist", type=int, help="IVF cells (default: the index's own, sqrt(n))")
    parser.add_argument("--rerank", type=int, nargs="+", default=[100], help="candidates per hit re-scored exactly")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--work-dir", help="where the shards and index go (default: the temporary folder)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = f"{environment()}; load average {load_average()}"
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        for data in args.data:
            for index_type in args.types:
                given = {"pq_m": args.pq_m, "nlist": args.nlist} if index_type in ("ivfpq", "opq") else {}
                options = {name: value for name, value in given.items() if value}
                rows += measure(size, data, index_type, options, args, rng)
    headers = ["images", "data", "index", "options", "filter", "shards s", "build s"]
    headers += ["build peak GiB (all / anonymous)", "disk / FAISS GiB"]
    headers += ["1 query p50 / p99 ms, rows from disk", "rows cached", "recall@10", "k hits"]
    table = markdown_table(headers, rows)
    print("\n" + table)
    if not args.no_write:
        write_results(
            args.output,
            f"# Image index built from shards\n\n{started} at the start, {load_average()} at the end.\n\n"
            f"{__doc__.split(chr(10) * 2)[1]}\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
