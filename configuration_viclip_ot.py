"""Configuration of ViCLIP-OT: a timm image tower and a transformers text tower projected to one space."""

import math

from transformers import AutoConfig, PretrainedConfig

# `keepitreal/vietnamese-sbert`: a PhoBERT-base RoBERTa, stored in full so that loading needs no network.
VIETNAMESE_SBERT_CONFIG = {
    "model_type": "roberta",
    "vocab_size": 64001,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 258,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}

VISION_POOLINGS = ("avg", "token", "avgmax", "max")
VISION_HEADS = ("linear", "mlp", "none")
TEXT_POOLINGS = ("mean", "cls")
TEXT_PROJECTIONS = ("auto", "linear", "none")
CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
# Auto classes beyond AutoConfig / AutoModel that load the model as remote code: the transformers
# `zero-shot-image-classification` pipeline loads it through AutoModelForZeroShotImageClassification.
PIPELINE_AUTO_MAP = {"AutoModelForZeroShotImageClassification": "modeling_viclip_ot.ViCLIPOTModel"}
# The pipelines `pipeline(task, model=folder, trust_remote_code=True)` builds: transformers' own, with images and texts
# handled as the processor handles them. Configs saved without this key get it too.
CUSTOM_PIPELINES = {
    "zero-shot-image-classification": {
        "impl": "processing_viclip_ot.ViCLIPOTZeroShotImageClassificationPipeline",
        "pt": ["AutoModelForZeroShotImageClassification"],
    },
    "image-feature-extraction": {
        "impl": "processing_viclip_ot.ViCLIPOTImageFeatureExtractionPipeline",
        "pt": ["AutoModel"],
    },
}


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")


class ViCLIPOTConfig(PretrainedConfig):
    r"""Configuration of [`ViCLIPOTModel`]. The defaults are the paper's model. The size of the images the image
    tower is fed is the processor's (`crop_size` in `processor_config.json`); a config saved with an `image_size`
    keeps it as an attribute that nothing reads.

    Args:
        vision_model_name (`str`): timm architecture of the image tower (`vit_base_patch16_dinov3`).
        vision_model_kwargs (`dict`): extra keyword arguments for `timm.create_model` (e.g. `embed_dim`, `depth`).
        vision_pooling (`str`): timm `global_pool`; `"avg"` averages patch tokens only (prefix tokens excluded).
        vision_head (`str`): `"linear"` (Dropout -> Linear without bias), `"mlp"` (Linear -> GELU -> Dropout ->
            Linear) or `"none"` (the tower's width must equal `projection_dim`).
        vision_head_dropout (`float`): dropout before (linear) or inside (mlp) the image head.
        vision_head_bias (`bool`): whether the image head's last Linear has a bias (the authors' `proj_bias`).
        text_config (`dict` or `PretrainedConfig`): the full transformers config of the text backbone.
        text_pooling (`str`): `"mean"` (masked mean over non-padding tokens) or `"cls"` (first token).
        text_projection (`str`): `"auto"` (a linear map only when the width differs from `projection_dim`),
            `"linear"` or `"none"`.
        text_projection_bias (`bool`): whether the text projection has a bias.
        projection_dim (`int`): dimension of the shared embedding space.
        logit_scale_init_value (`float`): initial log of the logit scale, ln(1/0.07) for CLIP.
        logit_bias_init_value (`float`, *optional*): initial logit bias. Setting it makes a SigLIP model (the
            sigmoid loss); leaving it `None` makes a CLIP model (the softmax loss).
        logit_scale_min, logit_scale_max (`float`): bounds of the scale exp(logit_scale) kept during training.
    """

    model_type = "viclip_ot"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        vision_model_name="vit_base_patch16_dinov3",
        vision_model_kwargs=None,
        vision_pooling="avg",
        vision_head="linear",
        vision_head_dropout=0.1,
        vision_head_bias=False,
        text_config=None,
        text_pooling="mean",
        text_projection="auto",
        text_projection_bias=False,
        projection_dim=768,
        logit_scale_init_value=CLIP_LOGIT_SCALE_INIT,
        logit_bias_init_value=None,
        logit_scale_min=0.01,
        logit_scale_max=100.0,
        **kwargs,
    ):
        _check_choice("vision_pooling", vision_pooling, VISION_POOLINGS)
        _check_choice("vision_head", vision_head, VISION_HEADS)
        _check_choice("text_pooling", text_pooling, TEXT_POOLINGS)
        _check_choice("text_projection", text_projection, TEXT_PROJECTIONS)
        if not 0 < logit_scale_min <= logit_scale_max:
            raise ValueError(
                f"logit scale bounds must satisfy 0 < min <= max, got [{logit_scale_min}, {logit_scale_max}]"
            )

        self.vision_model_name = vision_model_name
        self.vision_model_kwargs = dict(vision_model_kwargs or {})
        self.vision_pooling = vision_pooling
        self.vision_head = vision_head
        self.vision_head_dropout = vision_head_dropout
        self.vision_head_bias = vision_head_bias

        if text_config is None:
            text_config = dict(VIETNAMESE_SBERT_CONFIG)
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            if "model_type" not in text_config:
                raise ValueError("text_config needs a 'model_type' (the full transformers config of the text tower)")
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.text_pooling = text_pooling
        self.text_projection = text_projection
        self.text_projection_bias = text_projection_bias

        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_bias_init_value = logit_bias_init_value
        self.logit_scale_min = logit_scale_min
        self.logit_scale_max = logit_scale_max
        kwargs["auto_map"] = {**PIPELINE_AUTO_MAP, **kwargs.get("auto_map", {})}
        # Copies: transformers' `pipeline` rewrites the entries it uses.
        pipelines = {**CUSTOM_PIPELINES, **kwargs.get("custom_pipelines", {})}
        kwargs["custom_pipelines"] = {task: dict(info) for task, info in pipelines.items()}
        super().__init__(**kwargs)
