"""Processor of ViCLIP-OT: the paper's eval image transform and the text tower's tokenizer."""

import json
from pathlib import Path

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from transformers import AutoConfig, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_processing_utils import BaseImageProcessor


def to_rgb(image):
    """An RGB copy of a PIL image: palette, grayscale and CMYK images are converted, and transparent pixels (an
    alpha channel, or the `transparency` entry of a palette, grayscale or RGB image) become white. The corpus
    builders and inference use this one converter, so that both see the same pixels for the same file."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb_image(image):
    """A PIL image in RGB mode (see `to_rgb`) from a PIL image or a path."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    return image if image.mode == "RGB" and "transparency" not in image.info else to_rgb(image)


def read_sentence_transformers_settings(folder):
    """Pooling mode and maximum sequence length of a local sentence-transformers folder (empty otherwise)."""
    settings = {}
    pooling_file = Path(folder, "1_Pooling", "config.json")
    if pooling_file.is_file():
        pooling = json.loads(pooling_file.read_text())
        if pooling.get("pooling_mode_cls_token"):
            settings["text_pooling"] = "cls"
        elif pooling.get("pooling_mode_mean_tokens"):
            settings["text_pooling"] = "mean"
    bert_config = Path(folder, "sentence_bert_config.json")
    if bert_config.is_file():
        max_length = json.loads(bert_config.read_text()).get("max_seq_length")
        if max_length:
            settings["max_seq_length"] = max_length
    return settings


class ViCLIPOTImageProcessor(BaseImageProcessor):
    r"""The paper's eval transform: Resize(`resize_size`, bicubic) -> CenterCrop(`crop_size`) -> ImageNet mean/std.

    `resize_size` defaults to `crop_size * 256 / 224` (256 for the paper's 224 crop).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        crop_size=224,
        resize_size=None,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.crop_size = crop_size
        self.resize_size = resize_size or round(crop_size * 256 / 224)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @property
    def transform(self):
        # timm resizes the shorter side to floor(crop_size / crop_pct); the half pixel keeps that at resize_size.
        return create_transform(
            self.crop_size,
            crop_pct=self.crop_size / (self.resize_size + 0.5),
            interpolation="bicubic",
            mean=self.image_mean,
            std=self.image_std,
        )

    def preprocess(self, images, return_tensors="pt", **kwargs):
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        transform = self.transform
        pixel_values = torch.stack([transform(load_rgb_image(image)) for image in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class ViCLIPOTProcessor(ProcessorMixin):
    r"""Images through [`ViCLIPOTImageProcessor`], texts through the text tower's tokenizer (truncated at the
    tower's maximum length).

    Args:
        word_segmentation (`bool`): segment Vietnamese words (`pyvi`) before tokenising, as PhoBERT was trained.
            Off by default: the paper's weights were trained on unsegmented captions.
    """

    def __init__(self, image_processor=None, tokenizer=None, word_segmentation=False, **kwargs):
        self.word_segmentation = word_segmentation
        super().__init__(image_processor, tokenizer, **kwargs)

    def segment(self, texts):
        """Texts as PhoBERT expects them when `word_segmentation` is on (`khung cảnh` -> `khung_cảnh`)."""
        if not self.word_segmentation:
            return texts
        try:
            from pyvi import ViTokenizer
        except ImportError as error:
            raise ImportError("word_segmentation=True needs pyvi: pip install 'viclip-ot[segmentation]'") from error
        return [ViTokenizer.tokenize(text) for text in texts]

    def __call__(self, text=None, images=None, return_tensors="pt", padding=True, max_length=None, **kwargs):
        if text is None and images is None:
            raise ValueError("give `text`, `images` or both")
        features = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            features.update(
                self.tokenizer(
                    self.segment(texts),
                    padding=padding,
                    truncation=True,
                    max_length=max_length or self.tokenizer.model_max_length,
                    return_tensors=return_tensors,
                )
            )
        if images is not None:
            features.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(features, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["pixel_values"]

    @classmethod
    def from_text_tower(cls, text_model_name_or_path, crop_size=224, word_segmentation=False):
        """A processor for a new model: the tokenizer of a transformers text tower and the eval transform.

        Texts are truncated at the smallest of the tokenizer's maximum length, the `max_seq_length` of a
        sentence-transformers folder and the number of positions the tower has. A tower whose tokenizer or config
        cannot be loaded is one `ValueError` naming it.
        """
        source = str(text_model_name_or_path)
        try:
            config = AutoConfig.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, TypeError, AttributeError) as error:  # AttributeError: a vocabulary file is None
            message = f"cannot load the text tower {source!r}: no usable tokenizer or config ({error})"
            raise ValueError(message) from error
        limits = [tokenizer.model_max_length, position_limit(config)]
        limits.append(read_sentence_transformers_settings(source).get("max_seq_length"))
        tokenizer.model_max_length = min(limit for limit in limits if limit)
        return cls(ViCLIPOTImageProcessor(crop_size=crop_size), tokenizer, word_segmentation=word_segmentation)


def position_limit(text_config):
    """How many tokens the text tower can take: its position embeddings, less the padding offset of RoBERTa-style
    models (their positions start at `pad_token_id + 1`); None when the config has no such limit."""
    positions = getattr(text_config, "max_position_embeddings", None)
    if positions is None:
        return None
    roberta_style = "roberta" in text_config.model_type or text_config.model_type == "camembert"
    return positions - (text_config.pad_token_id + 1) if roberta_style else positions


ViCLIPOTImageProcessor.register_for_auto_class("AutoImageProcessor")
ViCLIPOTProcessor.register_for_auto_class("AutoProcessor")
