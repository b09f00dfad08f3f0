"""The demo model (the demo config's small towers, untrained) saved as a folder, and folders of demo images, shared by
the search, app and pipeline tests."""

from pathlib import Path

from training_setup import demo_split

REPO = Path(__file__).resolve().parents[1]


def save_demo_model(folder, cache_dir, seed=0) -> Path:
    """Build the model `configs/demo.yaml` trains (small towers, text tower fitted to demo captions) with random weights
    and save it to `folder/model`."""
    from transformers import set_seed

    from train import build_model
    from viclip_ot.arguments import parse_arguments

    model_args, _, _, _ = parse_arguments([str(REPO / "configs" / "demo.yaml"), "--output_dir", str(folder)])
    set_seed(seed)
    model = build_model(model_args, demo_split(cache_dir, "train", images=16), folder)
    model.save_pretrained(folder / "model")
    return folder / "model"


def write_demo_images(folder, cache_dir, count, split="test", start=0) -> list[Path]:
    """`count` demo-corpus images as PNG files `folder/<image_id>.png` (every third one in a subfolder)."""
    dataset = demo_split(cache_dir, split, images=start + count)
    paths = []
    for position in range(start, start + count):
        row = dataset[position]
        path = Path(folder, "sub" if position % 3 == 2 else "", f"{row['image_id']}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        row["image"].save(path)
        paths.append(path)
    return paths
