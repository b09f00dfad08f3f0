"""Indexing throughput: `ImageIndex.build` end to end on real-size JPEGs against the encoder's own rate.

The model is the paper-size one with random weights (`ViCLIPOTModel(ViCLIPOTConfig())`, DINOv3 ViT-B/16, as in
`benchmarks/encode.py`). The photos are `--images` 4000x3000 JPEGs (quality 90, ~12 MP, as a phone camera writes)
made from scikit-image's sample photos (upscaled, flipped and cropped so no two are alike). "encoder" is
`get_image_features` + normalisation on pre-decoded, preprocessed 224x224 pixel batches of `--batch-size`: the most
indexing can reach. "index" is `ImageIndex.build` on the folder (scan, decoding, preprocessing, encoding, shards, the
commit) with `--workers` decoding processes; its rate over the encoder's is the goal (>= 0.9).

    python benchmarks/index.py                 # writes benchmarks/results/index.md
    python benchmarks/index.py --images 8 --workers 0 2 --no-write   # a quick look
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _measure import environment, load_average, markdown_table, write_results
from PIL import Image
from skimage import data

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel
from processing_viclip_ot import ViCLIPOTImageProcessor
from viclip_ot.search import ImageFiles, ImageIndex

RESULTS = Path(__file__).parent / "results" / "index.md"
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")


def write_photos(folder: Path, count: int) -> list[Path]:
    """`count` distinct 4000x3000 JPEGs made from the sample photos."""
    paths = []
    for position in range(count):
        sample = Image.fromarray(getattr(data, SAMPLES[position % len(SAMPLES)])()).convert("RGB")
        crop = 0.05 * (position // len(SAMPLES) % 5)
        width, height = sample.size
        sample = sample.crop((int(crop * width), int(crop * height), width, height))
        if position // len(SAMPLES) % 2:
            sample = sample.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"IMG_{position:04d}.jpg"
        sample.resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


class _ImageOnlyProcessor:
    """The random-weight model has no tokenizer: indexing needs only the image processor."""

    image_processor = ViCLIPOTImageProcessor()


@torch.inference_mode()
def encoder_rate(model, pixel_values, batch_size):
    """Images/s of `get_image_features` + normalisation on pre-decoded pixels (after one warm-up batch)."""
    model.get_image_features(pixel_values[:batch_size])
    start = time.perf_counter()
    for first in range(0, len(pixel_values), batch_size):
        features = model.get_image_features(pixel_values[first : first + batch_size]).pooler_output
        torch.nn.functional.normalize(features, dim=-1)
    return len(pixel_values) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started = (
        f"{environment()}, torch {torch.__version__} ({torch.get_num_threads()} threads); load average {load_average()}"
    )

    torch.manual_seed(0)
    model = ViCLIPOTModel(ViCLIPOTConfig()).eval()
    model.processor = _ImageOnlyProcessor()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work, "photos")
        folder.mkdir()
        paths = write_photos(folder, args.images)
        megabytes = sum(path.stat().st_size for path in paths) / len(paths) / 2**20
        start = time.perf_counter()
        decoded = ImageFiles(folder, [path.name for path in paths], _ImageOnlyProcessor.image_processor)
        pixel_values = torch.stack([decoded[position][1] for position in range(len(paths))])
        decode_rate = len(paths) / (time.perf_counter() - start)
        encoder = encoder_rate(model, pixel_values, args.batch_size)
        print(f"decode + preprocess (1 process): {decode_rate:.2f} images/s; encoder: {encoder:.2f} images/s")
        rows.append(["decode + preprocess only", "1 process", f"{decode_rate:.2f}", ""])
        rows.append(["encoder (pre-decoded pixels)", "", f"{encoder:.2f}", "1.00"])
        for workers in args.workers:
            start = time.perf_counter()
            index = ImageIndex.build(
                model,
                folder,
                batch_size=args.batch_size,
                show_progress_bar=False,
                output=Path(work, f"index-{workers}"),
                num_workers=workers,
            )
            rate = len(index) / (time.perf_counter() - start)
            print(f"index, {workers} workers: {rate:.2f} images/s ({rate / encoder:.2f} of the encoder)", flush=True)
            rows.append(["`ImageIndex.build` end to end", f"{workers} workers", f"{rate:.2f}", f"{rate / encoder:.2f}"])
        assert np.isfinite(np.asarray(index.embeddings)).all()
    table = markdown_table(["case", "decoding", "images/s", "of the encoder"], rows)
    print("\n" + table)
    if not args.no_write:
        write_results(
            args.output,
            f"# Indexing throughput\n\n{started} at the start, {load_average()} at the end.\n\n"
            f"{__doc__.split(chr(10) * 2)[1]}\n\n{args.images} JPEGs of {megabytes:.1f} MB, batches of "
            f"{args.batch_size}.\n\n{table}\n",
        )


if __name__ == "__main__":
    main()
