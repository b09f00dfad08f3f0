"""Load a saved ViCLIP-OT model without running anything saved with it.

An index, the app or an evaluation may name a folder someone else made: [`load_model`] builds it with this package's
installed classes (never the copy of the code in the folder, never `trust_remote_code`) and reads its weights from
safetensors only (never a pickle).
"""

import json
from pathlib import Path

from modeling_viclip_ot import ViCLIPOTModel


def model_source(name: str) -> str:
    """`name` when it can name a model: an existing folder, or a Hub id (`owner/name`). A path that is no folder is a
    `FileNotFoundError`, rather than the Hub's complaint about a malformed repository id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"{name} is no model folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no such model folder: {name}")
    return name


def load_model(name_or_path: str, device=None, revision=None) -> ViCLIPOTModel:
    """A saved ViCLIP-OT model (folder, or Hub id at `revision`) in eval mode on `device`, built with this package's
    classes from `model.safetensors` (a folder's own code and pickled weights are ignored)."""
    name = model_source(str(name_or_path))
    config_file = Path(name, "config.json")
    if Path(name).is_dir():
        if not config_file.is_file():
            raise FileNotFoundError(f"{name} is no saved model: {config_file.name} is missing")
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, AttributeError) as error:
            raise ValueError(f"{config_file} is no model config: {error}") from None
        if model_type != ViCLIPOTModel.config_class.model_type:
            raise ValueError(f"{name} is no ViCLIP-OT model: its {config_file.name} has model_type {model_type!r}")
    try:
        model = ViCLIPOTModel.from_pretrained(name, revision=revision, use_safetensors=True).eval()
    except OSError as error:  # no model.safetensors (pickled weights only), or not on the Hub / offline
        raise FileNotFoundError(f"cannot load the model {name} (safetensors weights only): {error}") from error
    if Path(name).is_dir():
        model.name_or_path = str(Path(name).resolve())
    return model.to(device) if device is not None else model
