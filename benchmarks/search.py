"""Image-search index at scale: build time, memory, query latency and recall@10 of IVF / HNSW against exact search.

The collection is synthetic: `n` unit vectors of the model's width (768). "clustered", like the embeddings of a photo
collection: `n / 100` random unit centres, a vector is its centre plus Gaussian noise of norm `--noise` (1.5),
normalised (cosine ~0.55 with its centre, ~0.3 between two vectors of one cluster, ~0 otherwise); queries are fresh
draws from the same clusters. "uniform" (the worst case for approximate search, no structure at all): uniformly
random unit vectors and queries, run up to `--uniform-max-size` vectors. "latent" (`--data latent`): a smooth
low-dimensional structure, as embeddings have (their intrinsic dimension is far below their width): Gaussian points
of a random 32-d subspace plus 10 % isotropic noise, normalised. The indexes are
the ones `viclip_ot.search` builds (`make_faiss_index` + `train_faiss_index`, vectors added 1000 at a time as
`datasets` does). Latency: one query at a time (p50/p99 over `--queries` queries) and batches of 64 (per batch),
after encoding the query. recall@10 = overlap of the top 10 with the exact (flat) top 10, averaged over the queries.
Memory: the size of the serialised index (vectors, cells or graph), which is what it holds in RAM.

    python benchmarks/search.py                           # 100k and 1M, writes benchmarks/results/search.md
    python benchmarks/search.py --sizes 20000 --queries 50 --no-write   # a quick look
"""

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from _measure import environment, load_average, markdown_table, write_results

from viclip_ot.search import make_faiss_index, train_faiss_index

RESULTS = Path(__file__).parent / "results" / "search.md"
DIM = 768
BATCH = 64
K = 10
LATENT_DIM = 32  # "latent" data: intrinsic dimension


def unit_vectors(count, centres, noise, rng):
    """`count` unit vectors around random `centres` (or uniform on the sphere without centres)."""
    vectors = rng.standard_normal((count, DIM), dtype=np.float32) * np.float32(noise / np.sqrt(DIM))
    if centres is not None:
        vectors += centres[rng.integers(len(centres), size=count)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latent_unit_vectors(count, mixing, rng, chunk=100_000):
    """`count` unit vectors on a random `LATENT_DIM`-dimensional subspace, plus 10 % noise (built in chunks)."""
    vectors = np.empty((count, DIM), np.float32)
    for start in range(0, count, chunk):
        rows = min(chunk, count - start)
        block = rng.standard_normal((rows, LATENT_DIM), dtype=np.float32) @ mixing / np.float32(np.sqrt(DIM))
        block += rng.standard_normal((rows, DIM), dtype=np.float32) * np.float32(0.1 / np.sqrt(DIM))
        vectors[start : start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def search_times(index, queries):
    """(per-query seconds for one query at a time, per-batch seconds for batches of 64, top-10 ids of all queries)."""
    single, ids = [], []
    for query in queries:
        start = time.perf_counter()
        _, found = index.search(query[None], K)
        single.append(time.perf_counter() - start)
        ids.append(found[0])
    batched = []
    for start in range(0, len(queries) - BATCH + 1, BATCH):
        begin = time.perf_counter()
        index.search(queries[start : start + BATCH], K)
        batched.append(time.perf_counter() - begin)
    return np.array(single), np.array(batched), np.stack(ids)


def recall_at_k(found, exact):
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)]))


def build(index_type, vectors, **options):
    """The index, its build seconds and its size in GiB (serialised, which is what it holds in memory)."""
    start = time.perf_counter()
    index = train_faiss_index(make_faiss_index(index_type, DIM, len(vectors), **options), vectors)
    for first in range(0, len(vectors), 1000):
        index.add(vectors[first : first + 1000])
    seconds = time.perf_counter() - start
    return index, seconds, faiss.serialize_index(index).nbytes / 2**30


def ms(seconds):
    return f"{1000 * seconds:.2f}"


def measure(size, data, args, rng):
    print(f"\n== {size:,} {data} vectors", flush=True)
    if data == "latent":
        mixing = rng.standard_normal((LATENT_DIM, DIM), dtype=np.float32)
        vectors, queries = (latent_unit_vectors(count, mixing, rng) for count in (size, args.queries))
    else:
        centres = None
        if data == "clustered":
            centres = rng.standard_normal((max(1, size // 100), DIM), dtype=np.float32)
            centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        vectors = unit_vectors(size, centres, args.noise, rng)
        queries = unit_vectors(args.queries, centres, args.noise, rng)
    rows, exact = [], None
    cases = [("flat", {})]
    cases += [("ivf", {"nprobe": nprobe}) for nprobe in args.nprobe]
    if size <= args.hnsw_max_size:
        cases += [("hnsw", {"ef_search": ef}) for ef in args.ef_search]
    built, index = {}, None
    for index_type, options in cases:
        if index_type not in built:
            built.clear()
            index = None  # free the previous index before building the next
            print(f"  building {index_type} ...", flush=True)
            hnsw = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction} if index_type == "hnsw" else {}
            built[index_type] = build(index_type, vectors, **hnsw)
        index, seconds, memory = built[index_type]
        if index_type == "ivf":
            index.nprobe = options["nprobe"]
        if index_type == "hnsw":
            index.hnsw.efSearch = options["ef_search"]
        single, batched, found = search_times(index, queries)
        exact = found if exact is None else exact
        setting = {
            "flat": "exact",
            "ivf": f"nlist={getattr(index, 'nlist', '')} nprobe={options.get('nprobe')}",
            "hnsw": f"M={args.hnsw_m} efC={args.ef_construction} efSearch={options.get('ef_search')}",
        }[index_type]
        row = [
            f"{size:,}",
            data,
            index_type,
            setting,
            f"{seconds:.1f}",
            f"{memory:.2f}",
            ms(np.percentile(single, 50)),
            ms(np.percentile(single, 99)),
            ms(np.percentile(batched, 50)),
            ms(np.percentile(batched, 99)),
            f"{recall_at_k(found, exact):.3f}",
        ]
        print("  " + " | ".join(row), flush=True)
        rows.append(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=192, help="queries (a multiple of 64 for the batches)")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[4, 8, 16, 32, 64], help="IVF cases (none: no IVF)")
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument(
        "--data", nargs="+", choices=["clustered", "uniform", "latent"], default=["clustered", "uniform"]
    )
    parser.add_argument("--noise", type=float, default=1.5, help="clustered data: norm of the noise")
    parser.add_argument("--uniform-max-size", type=int, default=100_000, help="uniform data up to this size")
    parser.add_argument("--hnsw-max-size", type=int, default=100_000, help="skip HNSW above this size (build time)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    started = (
        f"{environment()}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads); load average "
        f"(1/5/15 min) {load_average()} at the start"
    )
    rng = np.random.default_rng(0)
    runs = [
        (size, data) for data in args.data for size in args.sizes if data != "uniform" or size <= args.uniform_max_size
    ]
    rows = [row for size, data in runs for row in measure(size, data, args, rng)]
    headers = [
        "images",
        "data",
        "index",
        "setting",
        "build s",
        "index GiB",
        "1 query p50 ms",
        "1 query p99 ms",
        "64 queries p50 ms",
        "64 queries p99 ms",
        "recall@10",
    ]
    table = markdown_table(headers, rows)
    print("\n" + table)
    if not args.no_write:
        write_results(
            args.output,
            f"# Image search at scale\n\n{started}, {load_average()} at the end.\n\n{__doc__.split(chr(10) * 2)[1]}\n\n"
            f"{args.queries} queries; {args.queries // BATCH} batches of {BATCH}. HNSW built only up to "
            f"{args.hnsw_max_size:,} vectors.\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
