"""Convert the authors' models into a saved ViCLIP-OT folder.

    python -m viclip_ot.convert minhnguyent546/ViCLIP-OT outputs/viclip-ot
    python -m viclip_ot.convert viclip_ot_best.pth outputs/viclip-ot --text-tower keepitreal/vietnamese-sbert

SOURCE is one of the authors' released models (a Hub id or a folder with their `config.json` and
`model.safetensors`) or a training checkpoint of their code (`.pth` with `model_state_dict`). The text tower's
architecture and tokenizer come from the tower their config names, or from `--text-tower`; the image tower's from
their config, or from `--image-tower` for a `.pth`. Heads, biases and the projection size are read from the weights.
"""

import argparse
import json
import math
import pickle
import shutil
import uuid
from pathlib import Path

import timm
import torch
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from transformers import AutoConfig

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import TIMM_HEAD_ARGS, ViCLIPOTModel
from processing_viclip_ot import ViCLIPOTProcessor

from .cli import run

PROG = "python -m viclip_ot.convert"


class AuthorsFormatError(ValueError):
    """Weights or a checkpoint that do not hold the authors' model in their format."""


# A training checkpoint names the towers `image_encoder` / `text_encoder`, a release `vision_model` / `text_model`.
CHECKPOINT_PREFIXES = {"image_encoder.": "vision_model.", "text_encoder.": "text_model."}
# The release's key prefixes and ours, first match wins.
KEY_PREFIXES = {
    "vision_model.trunk.": "vision_model.",
    "vision_model.head.proj.": "vision_head.proj.",
    "vision_model.head.mlp.fc1.": "vision_head.fc.",
    "vision_model.head.mlp.fc2.": "vision_head.proj.",
    "text_model.encoder.": "text_model.",
    "text_model.fc.": "text_projection.",
    "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",
}
# Keys the authors saved that this model has no use for: the text tower's pooler and an old buffer.
DROPPED_PREFIXES = ("text_model.encoder.pooler.", "text_model.encoder.embeddings.position_ids")


def rename_authors_state_dict(state_dict):
    """The authors' weights (release or training checkpoint) under this model's key names; keys of no known part
    are an error."""
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        for theirs, release in CHECKPOINT_PREFIXES.items():
            if key.startswith(theirs):
                key = release + key.removeprefix(theirs)
        if key.startswith(DROPPED_PREFIXES):
            continue
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
        else:
            renamed[KEY_PREFIXES[prefix] + key.removeprefix(prefix)] = value
    if unknown:
        raise AuthorsFormatError(f"{len(unknown)} weights belong to no known part, e.g. {unknown[:5]}")
    return renamed


def config_from_weights(state_dict, **config_kwargs):
    """The head layout, biases, projection size and logit scale/bias that `state_dict` (our key names) holds."""
    if "vision_head.fc.weight" in state_dict:
        head = "mlp"
    elif "vision_head.proj.weight" in state_dict:
        head = "linear"
    else:
        head = "none"
    settings = {
        "vision_head": head,
        "vision_head_bias": "vision_head.proj.bias" in state_dict,
        "text_projection": "linear" if "text_projection.weight" in state_dict else "none",
        "text_projection_bias": "text_projection.bias" in state_dict,
        "logit_scale_init_value": float(state_dict.get("logit_scale", math.log(1 / 0.07))),
        "logit_bias_init_value": float(state_dict["logit_bias"]) if "logit_bias" in state_dict else None,
    }
    for key in ("vision_head.proj.weight", "text_projection.weight"):
        if key in state_dict:
            settings["projection_dim"] = state_dict[key].shape[0]
    return {**settings, **config_kwargs}


def image_tower_settings(name):
    """(architecture, model_args) of the timm tower a release names: a Hub id such as
    `timm/vit_base_patch16_dinov3.lvd1689m`, a folder in timm's Hub layout, or a timm name."""
    if Path(name).is_dir():
        source = f"local-dir:{name}"
    elif timm.is_model(name.split("/")[-1].split(".")[0]) and name.startswith(("timm/", "hf-hub:timm/")):
        return name.split("/")[-1].split(".")[0], {}  # timm's own repos: the registry architecture, no extra args
    elif "/" in name:
        source = name if name.startswith("hf-hub:") else f"hf-hub:{name}"
    else:
        return name.split(".")[0], {}
    tower = timm.create_model(source, pretrained=False)
    model_args = {k: v for k, v in tower.pretrained_model_args.items() if k not in TIMM_HEAD_ARGS}
    return tower.pretrained_cfg["architecture"], model_args


def read_release(source):
    """(config, state_dict) of a released model: a folder or a Hub id."""
    folder = Path(source)
    try:
        config_file, weights = (
            (folder / name if folder.is_dir() else Path(hf_hub_download(str(source), name)))
            for name in ("config.json", "model.safetensors")
        )
    except (OSError, ValueError) as error:  # offline and not cached, no such repository, a malformed id
        raise FileNotFoundError(f"cannot read the authors' release {source}: {error}") from error
    for path in (config_file, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{source} is no release of the authors: {path.name} is missing")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "vision_config" not in config or "text_config" not in config:
        raise AuthorsFormatError(f"{config_file} is not the authors' config (no vision_config / text_config)")
    return config, load_file(weights)


def read_checkpoint(path):
    """The `model_state_dict` of a training checkpoint, read with `weights_only=True` (a pickle of anything but
    tensors and plain containers is refused)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error).split("\n")[0] if str(error).strip() else type(error).__name__
        raise AuthorsFormatError(f"{path} is refused: it is no plain checkpoint of tensors ({message})") from None
    except (RuntimeError, EOFError) as error:  # not a zip or a pickle, truncated
        raise AuthorsFormatError(f"{path} is no PyTorch checkpoint: {error}") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise AuthorsFormatError(f"{path} is no authors' training checkpoint: it has no 'model_state_dict'")
    return checkpoint["model_state_dict"]


def load_authors_model(source, text_tower=None, image_tower=None):
    """A [`ViCLIPOTModel`] with its processor holding the weights of an authors' release or `.pth`."""
    source = str(source)
    config_kwargs = {}
    if source.endswith((".pth", ".pt")):
        state_dict = read_checkpoint(source)
        text_tower = text_tower or "keepitreal/vietnamese-sbert"
        image_tower = image_tower or "vit_base_patch16_dinov3"
    else:
        release, state_dict = read_release(source)
        text_tower = text_tower or release["text_config"]["model_name"]
        vision = release["vision_config"]
        image_tower = image_tower or vision["model_name"]
        config_kwargs = {
            "vision_pooling": vision.get("pool", "avg"),
            "vision_head_dropout": vision.get("proj_dropout_rate", 0.0),
        }
    state_dict = rename_authors_state_dict(state_dict)
    architecture, model_args = image_tower_settings(image_tower)
    processor = ViCLIPOTProcessor.from_text_tower(text_tower)
    config = ViCLIPOTConfig(
        vision_model_name=architecture,
        vision_model_kwargs=model_args,
        text_config=AutoConfig.from_pretrained(text_tower).to_dict(),
        text_pooling="mean",
        **config_from_weights(state_dict, **config_kwargs),
    )
    model = ViCLIPOTModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise AuthorsFormatError(
            f"{source} does not fit the model: {len(missing)} missing weights {missing[:5]}, "
            f"{len(unexpected)} unexpected weights {unexpected[:5]}"
        )
    model.load_state_dict(state_dict)
    model.processor = processor
    return model.eval()


def check_output_dir(source, output_dir, overwrite=False) -> Path:
    """`output_dir`, resolved, if converting `source` into it harms no data: never the source or a folder inside or
    around it, and an existing non-empty folder only with `overwrite`."""
    output = Path(output_dir).resolve()
    if Path(source).exists():
        source = Path(source).resolve()
        if output == source or output.is_relative_to(source) or source.is_relative_to(output):
            raise ValueError(f"{output_dir} holds or is inside the source {source}: convert into another folder")
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output_dir} exists and is no folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty: pass --overwrite to replace it")
    return output


def convert(source, output_dir, text_tower=None, image_tower=None, overwrite=False):
    """Write a loadable folder (weights, config, code, processor, sentence-transformers files). The folder is written
    beside `output_dir` first and then replaces it, so a failed conversion leaves `output_dir` as it was."""
    output = check_output_dir(source, output_dir, overwrite)
    model = load_authors_model(source, text_tower, image_tower)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary, previous = (output.with_name(f".{output.name}.{kind}-{uuid.uuid4().hex[:8]}") for kind in ("tmp", "old"))
    try:
        model.save_pretrained(temporary)
        if output.exists():  # replaced with --overwrite: moved aside until the new folder is in place
            output.rename(previous)
        temporary.rename(output)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="the authors' release (Hub id or folder) or training checkpoint (.pth)")
    parser.add_argument("output_dir")
    parser.add_argument(
        "--text-tower",
        help="Hub id or folder (default: the one the release names; keepitreal/vietnamese-sbert for a .pth)",
    )
    parser.add_argument(
        "--image-tower",
        help="timm architecture, timm Hub id or folder (default: the release's; vit_base_patch16_dinov3 for a .pth)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists and is not empty")
    args = parser.parse_args(argv)
    convert(args.source, args.output_dir, args.text_tower, args.image_tower, args.overwrite)
    print(f"saved {args.output_dir}")


if __name__ == "__main__":
    run(main, prog=PROG)
