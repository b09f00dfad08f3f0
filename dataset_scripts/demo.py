"""The built-in demo corpus: coloured-shape scenes with paraphrased Vietnamese captions, made offline.

Each image (default 64x64 RGB, PNG) shows one to three shapes of one kind and colour grouped in one
region of a plain background. Scene factors: count (1-3), shape (circle, square, triangle), colour
(red, green, blue, yellow), position (left, right, top, bottom, centre) and background (white,
black, grey): 540 scenes. Each image has five captions that state every factor in different words,
e.g. `"hai hình tròn màu đỏ ở bên trái, nền trắng"` and `"trên nền màu trắng có hai vòng tròn đỏ
ở phía bên trái"`. Generation is deterministic: split `k` uses `numpy.random.default_rng([seed, k])`,
so changing one split's size leaves the others unchanged. Defaults: 1,000 / 200 / 200 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

from ._common import CorpusError, corpus_features, png_bytes

SPLITS = ("train", "validation", "test")

COUNTS = {1: ["một"], 2: ["hai"], 3: ["ba"]}
SHAPES = {
    "circle": ["hình tròn", "vòng tròn"],
    "square": ["hình vuông", "ô vuông"],
    "triangle": ["hình tam giác", "tam giác"],
}
COLOURS = {
    "red": ((220, 40, 40), ["màu đỏ", "đỏ"]),
    "green": ((40, 170, 60), ["màu xanh lá", "xanh lá cây"]),
    "blue": ((40, 80, 220), ["màu xanh dương", "xanh da trời"]),
    "yellow": ((235, 200, 30), ["màu vàng", "vàng"]),
}
BACKGROUNDS = {
    "white": ((245, 245, 245), ["trắng", "màu trắng"]),
    "black": ((20, 20, 20), ["đen", "màu đen"]),
    "grey": ((128, 128, 128), ["xám", "màu xám"]),
}
# region of the shapes' centres as (x0, y0, x1, y1) fractions of the image (apart from corners, disjoint), and its
# phrases
POSITIONS = {
    "left": ((0.08, 0.25, 0.30, 0.75), ["ở bên trái", "ở phía bên trái", "ở nửa trái của ảnh"]),
    "right": ((0.70, 0.25, 0.92, 0.75), ["ở bên phải", "ở phía bên phải", "ở nửa phải của ảnh"]),
    "top": ((0.25, 0.08, 0.75, 0.30), ["ở phía trên", "ở trên cùng", "ở nửa trên của ảnh"]),
    "bottom": ((0.25, 0.70, 0.75, 0.92), ["ở phía dưới", "ở dưới cùng", "ở nửa dưới của ảnh"]),
    "centre": ((0.35, 0.35, 0.65, 0.65), ["ở chính giữa", "ở trung tâm", "ở giữa bức ảnh"]),
}
TEMPLATES = (
    "{count} {shape} {colour} {position}, nền {background}",
    "có {count} {shape} {colour} {position} trên nền {background}",
    "trên nền {background} có {count} {shape} {colour} {position}",
    "bức ảnh nền {background} với {count} {shape} {colour} {position}",
    "{count} {shape} {colour} được vẽ {position} trên một nền {background}",
)
RADIUS = 0.075  # shape radius as a fraction of the image side


def _pick(rng: np.random.Generator, options):
    return options[rng.integers(len(options))]


def _centres(rng: np.random.Generator, count: int, region, size: int, radius: float) -> np.ndarray:
    """`count` shape centres inside `region` with no two shapes touching (batched rejection sampling)."""
    x0, y0, x1, y1 = (v * size for v in region)
    while True:
        points = rng.uniform((x0, y0), (x1, y1), size=(64, count, 2))
        gaps = np.linalg.norm(points[:, :, None] - points[:, None], axis=-1) + np.eye(count) * size
        valid = np.flatnonzero(gaps.min(axis=(1, 2)) > 2 * radius + 1)
        if valid.size:
            return points[valid[0]]


def _draw(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        side = r * 0.9
        draw.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)


def make_scene(rng: np.random.Generator, image_size: int = 64) -> tuple[Image.Image, list[str], dict]:
    """One random scene: the RGB image, its five captions and its factors."""
    factors = {
        "count": int(_pick(rng, list(COUNTS))),
        "shape": _pick(rng, list(SHAPES)),
        "colour": _pick(rng, list(COLOURS)),
        "position": _pick(rng, list(POSITIONS)),
        "background": _pick(rng, list(BACKGROUNDS)),
    }
    jitter = rng.integers(-12, 13, size=6)
    background = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(BACKGROUNDS[factors["background"]][0], jitter[:3]))
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[factors["colour"]][0], jitter[3:]))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    radius = RADIUS * image_size * rng.uniform(0.85, 1.15)
    for x, y in _centres(rng, factors["count"], POSITIONS[factors["position"]][0], image_size, radius):
        _draw(draw, factors["shape"], x, y, radius, fill)
    captions = [
        template.format(
            count=_pick(rng, COUNTS[factors["count"]]),
            shape=_pick(rng, SHAPES[factors["shape"]]),
            colour=_pick(rng, COLOURS[factors["colour"]][1]),
            position=_pick(rng, POSITIONS[factors["position"]][1]),
            background=_pick(rng, BACKGROUNDS[factors["background"]][1]),
        )
        for template in TEMPLATES
    ]
    return image, captions, factors


@dataclass
class DemoConfig(datasets.BuilderConfig):
    """Split sizes, image side in pixels and the generator seed."""

    train_size: int = 1000
    validation_size: int = 200
    test_size: int = 200
    image_size: int = 64
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        sizes = (self.train_size, self.validation_size, self.test_size)
        if not all(isinstance(n, int) and n >= 0 for n in sizes):
            raise CorpusError(f"demo split sizes must be integers >= 0 (0 leaves the split out), got {sizes}")
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise CorpusError(f"demo image_size must be an integer >= 16, got {self.image_size!r}")


class Demo(datasets.GeneratorBasedBuilder):
    """`datasets` builder for the demo corpus (splits train, validation, test); needs no files."""

    VERSION = datasets.Version("1.0.0")  # bump when the generated rows change
    BUILDER_CONFIG_CLASS = DemoConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description="ViCLIP-OT demo corpus", features=corpus_features())

    def _split_generators(self, dl_manager):
        if self.config.data_dir is not None:
            raise CorpusError("the demo corpus is generated, not read: pass no data_dir")
        sizes = (self.config.train_size, self.config.validation_size, self.config.test_size)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"index": index, "size": size, "split": split})
            for index, (split, size) in enumerate(zip(SPLITS, sizes))
            if size > 0
        ]

    def _generate_examples(self, index: int, size: int, split: str):
        rng = np.random.default_rng([self.config.seed, index])
        for row in range(size):
            image, captions, _ = make_scene(rng, self.config.image_size)
            yield (
                row,
                {
                    "image": {"bytes": png_bytes(image), "path": None},
                    "image_id": f"{split}-{row:05d}",
                    "captions": captions,
                },
            )
