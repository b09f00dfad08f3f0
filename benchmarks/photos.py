"""Huge photos: JPEG `draft` decoding against a full decode (time and embedding difference) on real sample photos
upscaled to 6000x4000, and the peak memory of encoding a batch of six 12000x12000 photos. Writes
benchmarks/results/photos.md.

    python benchmarks/photos.py
"""

import multiprocessing
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _measure import write_results  # noqa: E402
from conftest import VIETNAMESE_TEXTS  # noqa: E402

from processing_viclip_ot import load_rgb_image  # noqa: E402
from viclip_ot.small_towers import save_small_text_tower, small_model  # noqa: E402

torch.set_num_threads(2)
SAMPLES = {"astronaut": data.astronaut, "chelsea": data.chelsea, "coffee": data.coffee, "rocket": data.rocket}


def peak_rss(paths):
    """Peak RSS (MB) of a fresh process before and after preprocessing `paths` as one batch."""
    from processing_viclip_ot import ViCLIPOTImageProcessor

    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    image_processor = ViCLIPOTImageProcessor(crop_size=224)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image_processor(paths)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(function, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    folder = Path(tempfile.mkdtemp())
    tower = save_small_text_tower(folder / "text", VIETNAMESE_TEXTS, model_type="roberta")
    torch.manual_seed(0)
    # The paper's input size (224 crop, resize 256) on a small tower: decoding dominates.
    model = small_model(tower, image_size=224).eval()
    image_processor = model.processor.image_processor
    rows = [
        "| photo (6000x4000 JPEG, q95) | full decode + resize (s) | draft decode + resize (s) | speed-up | "
        "cosine(draft, full) | max abs embedding diff |",
        "|---|---|---|---|---|---|",
    ]
    for name, sample in SAMPLES.items():
        path = folder / f"{name}.jpg"
        Image.fromarray(sample()).convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC).save(path, quality=95)

        def full(path=path):
            with Image.open(path) as image:
                return image_processor.transform.transforms[0](load_rgb_image(image.convert("RGB")))

        full_time = best_of(full)
        draft_time = best_of(lambda path=path: image_processor.load(path))
        full_embedding = model.encode_image([full()])
        draft_embedding = model.encode_image([path])
        cosine = float(full_embedding @ draft_embedding.T)
        difference = float((full_embedding - draft_embedding).abs().max())
        rows.append(
            f"| {name} | {full_time:.3f} | {draft_time:.3f} | {full_time / draft_time:.1f}x | {cosine:.5f} | "
            f"{difference:.4f} |"
        )

    memory = [
        "| 6 photos, 12000x12000 | peak RSS before (MB) | peak RSS after the batch (MB) | one decoded photo (MB) |",
        "|---|---|---|---|",
    ]
    for extension in ("png", "jpg"):
        noise = np.random.default_rng(0).integers(0, 256, (750, 750, 3), dtype=np.uint8)
        big = Image.fromarray(noise).resize((12000, 12000), Image.Resampling.BILINEAR)
        paths = []
        for index in range(6):
            paths.append(folder / f"huge-{index}.{extension}")
            big.save(paths[-1], **({"quality": 90} if extension == "jpg" else {"compress_level": 1}))
        del big
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            baseline, peak = pool.apply(peak_rss, (paths,))
        memory.append(f"| {extension.upper()} | {baseline:.0f} | {peak:.0f} | {12000 * 12000 * 3 / 2**20:.0f} |")

    text = (
        "# Huge photos: JPEG draft decoding and peak memory\n\n`python benchmarks/photos.py` (2 CPU threads). "
        "Real sample photos (scikit-image) upscaled to 6000x4000 and saved as JPEG; the processor's resize size is "
        f"{image_processor.resize_size} (224 crop). Times are the best of 3 for decoding and resizing one photo; "
        "the embeddings come from a small random model at the paper's input size.\n\n" + "\n".join(rows) + "\n\n"
        "Peak memory (the process's peak RSS, in a fresh process) of the processor on one batch of six "
        "12000x12000 photos: each photo is decoded, turned upright and resized before the next is opened, so the peak "
        "grows by about one decoded photo, not six.\n\n" + "\n".join(memory) + "\n"
    )
    print(text)
    write_results(REPO / "benchmarks" / "results" / "photos.md", text)


if __name__ == "__main__":
    main()
