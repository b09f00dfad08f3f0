"""Processor of ViCLIP-OT: the paper's eval image transform and the text tower's tokenizer, with the one image loader
and the one Vietnamese text normalisation that every path (encoding, pipelines, training, search) goes through."""

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from transformers import (
    AutoConfig,
    AutoTokenizer,
    BatchFeature,
    ImageFeatureExtractionPipeline,
    ProcessorMixin,
    ZeroShotImageClassificationPipeline,
)
from transformers.image_processing_utils import BaseImageProcessor

try:  # HEIC/HEIF photos (the iPhone default): pip install 'viclip-ot[photos]'. Pillow itself reads AVIF.
    from pillow_heif import register_heif_opener
except ImportError:  # optional: this file also runs alone beside saved weights
    register_heif_opener = None
else:
    register_heif_opener()

# Extensions of photo formats that need a Pillow plugin (or a Pillow built with libavif); a folder holding such files
# without it gets a warning naming the extra.
PLUGIN_EXTENSIONS = {".heic": "HEIC", ".heics": "HEIC", ".heif": "HEIF", ".heifs": "HEIF", ".avif": "AVIF"}
PHOTOS_EXTRA = "pip install 'viclip-ot[photos]' (pillow-heif)"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def upright(image):
    """`image` turned as its EXIF orientation says (how phones store portrait photos), as the transformers pipelines
    and browsers show it: a new image without the orientation tag, or `image` itself when it has none."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image):
    """An upright (see `upright`) RGB copy of a PIL image: palette, grayscale and CMYK images are converted, 16-bit
    grayscale (`I;16*`, and `I`, read as 0-65535) keeps its high byte, float images (`F`) in [0, 1] are scaled to
    0-255 (others clipped there), and transparent pixels (an alpha channel, or the `transparency` entry of a palette,
    grayscale or RGB image) become white. (Pillow already reads 16-bit RGB files as 8-bit RGB by their high byte.)
    The corpus builders and inference use this one converter, so that both see the same pixels for the same file."""
    image = upright(image)
    if image.mode in SIXTEEN_BIT_MODES:
        high_byte = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(high_byte.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and values.min() >= 0 and values.max() <= 1 else 1.0
        return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def is_upright_rgb(image):
    """Whether `to_rgb` would return the same pixels: RGB, no transparency, no EXIF turn."""
    upright_tag = image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    return image.mode == "RGB" and "transparency" not in image.info and upright_tag


def load_rgb_image(image, draft_size=None):
    """An upright RGB PIL image (see `to_rgb`) from a PIL image or a path.

    With `draft_size`, a JPEG file is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 scale whose sides are both at
    least `draft_size` (PIL's `draft`): a 50-megapixel photo costs about what a 2-megapixel one does.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as opened:
            if draft_size and opened.format == "JPEG":
                opened.draft(opened.mode, (draft_size, draft_size))
            opened.load()
            return to_rgb(opened)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a path, got {type(image).__name__}")
    return image if is_upright_rgb(image) else to_rgb(image)


# --------------------------------------------------------------------------------------------------------------------
# Vietnamese text normalisation
# --------------------------------------------------------------------------------------------------------------------

# The five tone marks as combining characters: grave (huyền), acute (sắc), hook above (hỏi), tilde (ngã), dot below
# (nặng).
TONE_MARKS = "\u0300\u0301\u0309\u0303\u0323"
# Vowel clusters whose tone mark is written on either vowel when the cluster ends the syllable: "hòa"/"hoà",
# "khỏe"/"khoẻ", "thủy"/"thuỷ". Before a final consonant or vowel the mark's place is fixed ("hoàn", "hoài", "huỳnh",
# "khuỷu") and so it is after "q", where "u" belongs to the consonant ("quý").
TONE_CLUSTERS = ("oa", "oe", "uy")
TONE_PLACEMENTS = ("oà", "òa")


def _tone_table():
    """`{mark on the first vowel: mark on the second}` for every cluster, tone and case ("òa" -> "oà", "Òa" -> "Oà",
    "ÒA" -> "OÀ"): VinAI's table (github.com/VinAIResearch/BARTpho, VietnameseToneNormalization.md), the rule
    VnCoreNLP applied to PhoBERT's and BARTpho's pretraining text."""
    table = {}
    for first, second in TONE_CLUSTERS:
        for a, b in ((first, second), (first.upper(), second), (first.upper(), second.upper())):
            for mark in TONE_MARKS:
                table[unicodedata.normalize("NFC", a + mark) + b] = a + unicodedata.normalize("NFC", b + mark)
    return table


TONE_TABLE = _tone_table()
_TO_SECOND = re.compile("|".join(TONE_TABLE))
# Only where the cluster ends the syllable (no letter follows) and does not follow "q".
_TO_FIRST = re.compile(r"(?<![qQ])(" + "|".join(TONE_TABLE.values()) + r")(?![^\W\d_])")
_FIRST = {second: first for first, second in TONE_TABLE.items()}


def normalize_vietnamese(text, tone_normalization="oà"):
    """`text` in Unicode NFC (so that NFD input, as macOS and some web pages and PDFs write it, gives the same tokens),
    with the tone marks of the open syllables oa, oe, uy placed one way: `"oà"` on the second vowel ("hoà", "khoẻ",
    "thuỷ": the placement of PhoBERT's pretraining text, see `TONE_TABLE`), `"òa"` on the first ("hòa", "khỏe",
    "thủy"), or None to leave them as written."""
    text = unicodedata.normalize("NFC", text)
    if tone_normalization == "oà":
        return _TO_SECOND.sub(lambda match: TONE_TABLE[match[0]], text)
    if tone_normalization == "òa":
        return _TO_FIRST.sub(lambda match: _FIRST[match[0]], text)
    if tone_normalization is None:
        return text
    raise ValueError(f"tone_normalization={tone_normalization!r}: choose {' or '.join(TONE_PLACEMENTS)} or None")


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

    def load(self, image):
        """An upright RGB image (see `load_rgb_image`; JPEGs decoded at no less than `resize_size`) with its shorter
        side resized to `resize_size` as `transform` does (whose resize is then a no-op): a batch of these holds
        small images whatever the files' pixel counts."""
        return self.transform.transforms[0](load_rgb_image(image, draft_size=self.resize_size))

    def preprocess(self, images, return_tensors="pt", **kwargs):
        if isinstance(images, (Image.Image, str, Path)):
            images = [images]
        transform = self.transform
        # One image at a time: at most one full-resolution image is decoded at once.
        pixel_values = torch.stack([transform(self.load(image)) for image in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class ViCLIPOTProcessor(ProcessorMixin):
    r"""Images through [`ViCLIPOTImageProcessor`], texts through the text tower's tokenizer (truncated at the
    tower's maximum length).

    Every text is first normalised (`normalize_vietnamese`: Unicode NFC, then the tone-mark placement), so that the
    same words give the same tokens however they were typed; both settings are saved in `processor_config.json`.

    Args:
        word_segmentation (`bool`): segment Vietnamese words (`pyvi`) before tokenising, as PhoBERT was trained.
            Off by default: the paper's weights were trained on unsegmented captions.
        tone_normalization (`str` or None): where the tone marks of the open syllables oa, oe, uy go: `"oà"` (the
            default, and what processors saved without this setting get: "hoà", "thuỷ", as PhoBERT's pretraining text
            was written), `"òa"` ("hòa", "thủy"), or None to keep them as typed. NFC applies in every case.
    """

    def __init__(
        self, image_processor=None, tokenizer=None, word_segmentation=False, tone_normalization="oà", **kwargs
    ):
        normalize_vietnamese("", tone_normalization)  # an unknown setting fails here, not at the first text
        self.word_segmentation = word_segmentation
        self.tone_normalization = tone_normalization
        super().__init__(image_processor, tokenizer, **kwargs)

    def normalize(self, texts):
        """Texts as they are tokenised: normalised (see the class doc), then word-segmented when that is on
        (`khung cảnh` -> `khung_cảnh`)."""
        texts = [normalize_vietnamese(text, self.tone_normalization) for text in texts]
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
                    self.normalize(texts),
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


class ViCLIPOTPipelineMixin:
    """What the transformers pipelines of ViCLIP-OT do as the processor does: images (PIL images and paths) loaded
    by `ViCLIPOTImageProcessor.load` (EXIF, 16-bit and float modes, JPEG draft) before transformers' `load_image`
    sees them (which would clip 16-bit values; URLs and base64 strings are left to it), and texts normalised by the
    model's processor (`ViCLIPOTProcessor.normalize`; `normalize_vietnamese` by default for a model without one).

    The config's `custom_pipelines` makes `pipeline(task, model=folder, trust_remote_code=True)` build these
    classes; a pipeline built from a model object gets them with `pipeline_class=`."""

    def load_image(self, image):
        if isinstance(image, str) and not Path(image).is_file():
            return image
        return self.image_processor.load(image)

    def normalize(self, texts):
        processor = getattr(self.model, "processor", None)
        if processor is None:
            return [normalize_vietnamese(text) for text in texts]
        return processor.normalize(texts)


class ViCLIPOTZeroShotImageClassificationPipeline(ViCLIPOTPipelineMixin, ZeroShotImageClassificationPipeline):
    """transformers' zero-shot image classification, with images and texts handled as the processor handles them
    (see `ViCLIPOTPipelineMixin`); the results name the labels as given."""

    def preprocess(self, image, candidate_labels=None, hypothesis_template="This is a photo of {}.", **kwargs):
        # Whole sentences are normalised (the tone rule looks at the letters around a label).
        sentences = self.normalize([hypothesis_template.format(label) for label in candidate_labels])
        inputs = super().preprocess(self.load_image(image), sentences, hypothesis_template="{}", **kwargs)
        inputs["candidate_labels"] = candidate_labels
        return inputs


class ViCLIPOTImageFeatureExtractionPipeline(ViCLIPOTPipelineMixin, ImageFeatureExtractionPipeline):
    """transformers' image feature extraction, with images loaded as the processor loads them (see
    `ViCLIPOTPipelineMixin`)."""

    def preprocess(self, image, **kwargs):
        return super().preprocess(self.load_image(image), **kwargs)


ViCLIPOTImageProcessor.register_for_auto_class("AutoImageProcessor")
ViCLIPOTProcessor.register_for_auto_class("AutoProcessor")
