"""Dual encoders to evaluate: ViCLIP-OT and the baselines users compare it with, behind one interface.

`load_encoder(name_or_path)` reads what the folder or Hub repository holds and returns an object with
`encode_image(images, batch_size=..., show_progress_bar=...)` and `encode_text(texts, ...)`, both returning
L2-normalised float32 CPU tensors:

* a ViCLIP-OT model (`config.json` with model_type `viclip_ot`): the model itself, built by
  [`viclip_ot.loading.load_model`] (this package's code, safetensors weights);
* a sentence-transformers model (`modules.json`) that encodes images, e.g. `jinaai/jina-clip-v2`:
  [`SentenceTransformersEncoder`];
* a transformers model whose class has `get_image_features` and `get_text_features` (CLIP, SigLIP, ...), read
  with `AutoModel` + `AutoProcessor`: [`TransformersEncoder`].

With `text_model`, texts go through a second (sentence-transformers) model trained into the first one's space, as
multilingual CLIP does (`clip-ViT-B-32` for images, `clip-ViT-B-32-multilingual-v1` for texts).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from PIL import Image
from transformers import AutoModel, AutoProcessor

from modeling_viclip_ot import encode_in_batches
from processing_viclip_ot import load_rgb_image

from .loading import load_model, model_source


class EncoderError(ValueError):
    """A model that cannot be evaluated as an image-text dual encoder."""


def load_encoder(name_or_path, device="cpu", *, text_model=None, trust_remote_code=False):
    """An image-text encoder for the model folder or Hub id `name_or_path`, on `device` (see the module doc).
    Whatever stops a model from loading is raised as one `EncoderError`."""
    try:
        encoder = _load(str(name_or_path), device, trust_remote_code)
        if text_model is None:
            return encoder
        texts = SentenceTransformersEncoder.load(str(text_model), device, trust_remote_code, needs_images=False)
        return PairedEncoder(encoder, texts)
    except EncoderError:
        raise
    except ImportError as error:  # e.g. a SigLIP tokenizer without sentencepiece
        message = " ".join(str(error).split())  # transformers' message spans several lines
        raise EncoderError(f"cannot load {name_or_path}: a package it needs is missing: {message}") from error
    except (OSError, ValueError) as error:  # e.g. code of its own but no trust_remote_code, missing weights
        raise EncoderError(f"cannot load {name_or_path}: {error}") from error


def _load(name, device, trust_remote_code):
    config = _read_json(name, "config.json")
    if config is not None and config.get("model_type") == "viclip_ot":
        return load_model(name, device)
    if _read_json(name, "modules.json") is not None:
        return SentenceTransformersEncoder.load(name, device, trust_remote_code, needs_images=True)
    if config is not None:
        return TransformersEncoder.load(name, device, trust_remote_code)
    raise EncoderError(
        f"{name} holds neither config.json nor modules.json: it is no transformers or sentence-transformers model"
    )


def _read_json(name, filename):
    """`filename` of the folder or Hub repository `name` as a dict, or None when it has no such file."""
    try:
        name = model_source(name)
    except FileNotFoundError as error:
        raise EncoderError(str(error)) from None
    if Path(name).is_dir():
        path = Path(name, filename)
    else:
        try:
            path = Path(hf_hub_download(name, filename))
        except RemoteEntryNotFoundError:
            return None
        except (OSError, ValueError) as error:  # offline and not cached, no such repository, a malformed id
            raise EncoderError(f"cannot read the model {name} from the Hub: {error}") from None
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _normalised(embeds):
    """L2-normalised float32 CPU rows of `get_*_features` output (a tensor or a `BaseModelOutputWithPooling`)."""
    embeds = getattr(embeds, "pooler_output", embeds)
    return F.normalize(embeds.float(), dim=-1).cpu()


class TransformersEncoder:
    """A transformers dual encoder (CLIP, SigLIP, ...) and its processor. SigLIP models were trained on texts
    padded to the full length, so they get `padding="max_length"`; others pad to the longest text."""

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor
        text_config = getattr(model.config, "text_config", None)
        self.text_kwargs = {
            "padding": "max_length" if model.config.model_type.startswith("siglip") else True,
            "truncation": True,
            "max_length": getattr(text_config, "max_position_embeddings", None),
        }

    @classmethod
    def load(cls, name, device="cpu", trust_remote_code=False):
        model = AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code)
        if not all(callable(getattr(model, method, None)) for method in ("get_image_features", "get_text_features")):
            raise EncoderError(
                f"{name} is not an image-text retrieval model: its config.json has model_type "
                f"{model.config.model_type!r}, and {type(model).__name__} has no get_image_features and "
                "get_text_features. Expected a ViCLIP-OT model, a transformers dual encoder (CLIP, SigLIP, ...) "
                "or a sentence-transformers model that encodes images."
            )
        return cls(model.to(device), AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code))

    @torch.no_grad()
    def encode_image(self, images, batch_size=32, show_progress_bar=False):
        """L2-normalised embeddings of PIL images or image paths."""

        def embed(batch):
            inputs = self.processor(images=batch, return_tensors="pt").to(self.model.device)
            return _normalised(self.model.get_image_features(**inputs))

        images = [load_rgb_image(image) for image in images]
        return encode_in_batches(embed, images, batch_size, show_progress_bar, "encoding images")

    @torch.no_grad()
    def encode_text(self, texts, batch_size=32, show_progress_bar=False):
        """L2-normalised embeddings of texts."""

        def embed(batch):
            inputs = self.processor(text=batch, return_tensors="pt", **self.text_kwargs).to(self.model.device)
            return _normalised(self.model.get_text_features(**inputs))

        return encode_in_batches(embed, list(texts), batch_size, show_progress_bar, "encoding texts")


class SentenceTransformersEncoder:
    """A `SentenceTransformer` that embeds PIL images and texts in one space."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, name, device="cpu", trust_remote_code=False, needs_images=True):
        """Load `name`; with `needs_images`, raise an `EncoderError` unless it encodes images too."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(name, device=str(device), trust_remote_code=trust_remote_code)
        encoder = cls(model)
        if needs_images and not encoder.encodes_images():
            raise EncoderError(
                f"{name} is a sentence-transformers model that encodes only {', '.join(map(str, model.modalities))}: "
                "not an image-text retrieval model (a text model trained into an image model's space goes with "
                "that image model, as eval.py --text-model)"
            )
        return encoder

    def encodes_images(self):
        """Whether the model takes images: its first module says so, or (custom modules from remote code, such as
        jina-clip-v2's, which declare no modalities) it embeds a blank test image."""
        modalities = getattr(self.model[0], "modalities", None)
        if modalities is not None:
            return "image" in modalities
        try:
            return self.encode_image([Image.new("RGB", (64, 64))]).shape[0] == 1
        except (TypeError, ValueError, KeyError, RuntimeError):
            return False

    def encode_image(self, images, batch_size=32, show_progress_bar=False):
        """L2-normalised embeddings of PIL images or image paths."""
        return self._encode([load_rgb_image(image) for image in images], batch_size, show_progress_bar)

    def encode_text(self, texts, batch_size=32, show_progress_bar=False):
        """L2-normalised embeddings of texts."""
        return self._encode(list(texts), batch_size, show_progress_bar)

    def _encode(self, items, batch_size, show_progress_bar):
        return _normalised(
            self.model.encode(items, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_tensor=True)
        )


class PairedEncoder:
    """Images through one encoder, texts through another trained into the same space."""

    def __init__(self, image_encoder, text_encoder):
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def encode_image(self, images, batch_size=32, show_progress_bar=False):
        return self.image_encoder.encode_image(images, batch_size=batch_size, show_progress_bar=show_progress_bar)

    def encode_text(self, texts, batch_size=32, show_progress_bar=False):
        return self.text_encoder.encode_text(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
