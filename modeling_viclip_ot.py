"""ViCLIP-OT: a timm image tower and a transformers text tower mapped to one L2-normalised embedding space."""

import functools
import hashlib
import importlib
import json
import os
import shutil
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import PROCESSOR_NAME, ModelOutput, logging

if __package__:  # remote code: transformers loads the three files as one package
    from .configuration_viclip_ot import ViCLIPOTConfig
else:  # the installed top-level modules (imported by name so that remote code does not ask for them)
    ViCLIPOTConfig = importlib.import_module("configuration_viclip_ot").ViCLIPOTConfig

logger = logging.get_logger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Contrastive losses: multi-positive CLIP and SigLIP. Row k pairs caption k with image caption_image_index[k];
# `scale` is the scale s = exp(logit_scale) itself, `bias` SigLIP's b.
# --------------------------------------------------------------------------------------------------------------


def full_precision(function):
    """Run `function` with autocast off and its floating-point tensor arguments upcast to at least float32 (the
    losses: a bf16 logit or OT cost loses the precision the softmax and Sinkhorn need)."""

    def upcast(value):
        if torch.is_tensor(value) and value.is_floating_point():
            return value.to(torch.promote_types(value.dtype, torch.float32))
        return value

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        args = [upcast(value) for value in args]
        kwargs = {name: upcast(value) for name, value in kwargs.items()}
        device_type = next(value.device.type for value in [*args, *kwargs.values()] if torch.is_tensor(value))
        with torch.autocast(device_type, enabled=False):
            return function(*args, **kwargs)

    return wrapper


def same_image_mask(caption_image_index):
    """N x N boolean matrix: captions i and j describe the same image."""
    return caption_image_index[:, None] == caption_image_index[None, :]


def caption_row_logits(image_embeds, text_embeds, caption_image_index, scale, bias=None):
    """The (N, N) caption-row logits s * x_i . y_j (+ b) of the losses: row i is the image of caption i, column j is
    caption j (the B x N image rows are computed once and then repeated per caption). Not the model's
    `logits_per_text`, (N, B) over the batch's images."""
    row_logits = (scale * image_embeds @ text_embeds.T).index_select(0, caption_image_index)
    return row_logits if bias is None else row_logits + bias


def multi_positive_clip_loss(image_embeds, text_embeds, caption_image_index, scale):
    """CLIP loss with several captions per image: each row's target is uniform over its same-image columns;
    the mean of the image->text and text->image cross-entropies."""
    row_logits = caption_row_logits(image_embeds, text_embeds, caption_image_index, scale)
    positives = same_image_mask(caption_image_index).to(row_logits.dtype)
    targets = positives / positives.sum(dim=1, keepdim=True)
    return (F.cross_entropy(row_logits, targets) + F.cross_entropy(row_logits.T, targets)) / 2


def multi_positive_siglip_loss(image_embeds, text_embeds, caption_image_index, scale, bias):
    """SigLIP loss with several captions per image: (1/N) sum_ij w_ij softplus(-z_ij l_ij), z = +1 on same-image
    pairs and -1 elsewhere, w = 1/(positives of row i) on positives and 1 on negatives."""
    row_logits = caption_row_logits(image_embeds, text_embeds, caption_image_index, scale, bias)
    positives = same_image_mask(caption_image_index)
    signs = positives.to(row_logits.dtype) * 2 - 1
    weights = torch.where(positives, 1 / positives.sum(dim=1, keepdim=True).to(row_logits.dtype), 1.0)
    return (weights * F.softplus(-signs * row_logits)).sum() / row_logits.shape[0]


@full_precision
def contrastive_loss(image_embeds, text_embeds, caption_image_index, scale, bias=None):
    """The multi-positive CLIP loss, or SigLIP's when a `bias` is given (the one rule: a model with a logit bias is a
    SigLIP model), in float32, of image_embeds (B, d), text_embeds (N, d) and caption_image_index (N,)."""
    if bias is None:
        return multi_positive_clip_loss(image_embeds, text_embeds, caption_image_index, scale)
    return multi_positive_siglip_loss(image_embeds, text_embeds, caption_image_index, scale, bias)


def check_caption_image_index(caption_image_index, num_images, num_captions):
    """Raise a clear error unless every caption points at one of the batch's images."""
    if caption_image_index.shape != (num_captions,):
        raise ValueError(
            f"caption_image_index has shape {tuple(caption_image_index.shape)}, expected ({num_captions},)"
        )
    if num_captions and (caption_image_index.min() < 0 or caption_image_index.max() >= num_images):
        raise ValueError(f"caption_image_index must lie in [0, {num_images}) for a batch of {num_images} images")


# --------------------------------------------------------------------------------------------------------------
# Fast inference: bf16 autocast where the CPU computes bf16 natively, int8 towers in ONNX Runtime
# --------------------------------------------------------------------------------------------------------------

# `backend=` of `encode_image` / `encode_text`: "torch" (the model as it is, fp32), "bf16" (bf16 autocast; fp32 with
# a warning on a CPU without native bf16), "auto" (bf16 where native: CUDA, or a CPU with bf16 instructions; else
# fp32), "onnx-int8" (each tower exported to ONNX and dynamically quantised to int8, run by ONNX Runtime on the CPU;
# needs `pip install viclip-ot[fast]`).
ENCODE_BACKENDS = ("torch", "bf16", "auto", "onnx-int8")
NATIVE_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX, Arm BF16 (Linux flag names)


@functools.cache
def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 instructions, read from the flags of Linux's `cpuinfo` (False where there is no such
    file)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith(("flags", "Features")) for flag in line.split(":", 1)[1].split()}
    return bool(flags & NATIVE_BF16_CPU_FLAGS)


def autocast_dtype(backend, device):
    """The autocast dtype that `backend` ("torch", "bf16", "auto") means on `device`, None for plain fp32."""
    device = torch.device(device)
    if backend == "torch":
        return None
    native = cpu_has_native_bf16() if device.type == "cpu" else device.type == "cuda" and torch.cuda.is_bf16_supported()
    if not native and backend == "bf16":
        logger.warning_once(f"no native bf16 on this {device.type.upper()}: encoding in fp32 instead (backend='bf16')")
    return torch.bfloat16 if native else None


def encode_in_batches(embed, items, batch_size, show_progress_bar=None, desc="encoding", dim=0) -> torch.Tensor:
    """`embed(batch)` of each run of `batch_size` items, concatenated in order; `(0, dim)` for no items. The loop
    of `ViCLIPOTModel.encode_image` / `encode_text`, and of the baseline encoders of `viclip_ot.encoders`."""
    chunks = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not show_progress_bar, unit="batch"):
        chunks.append(embed(items[start : start + batch_size]))
    return torch.cat(chunks) if chunks else torch.empty(0, dim)


def model_fingerprint(model) -> str:
    """SHA-256 of the model's config (without paths and versions) and of every weight (name, dtype, shape, bytes)."""
    ignored = {"_name_or_path", "name_or_path", "auto_map", "custom_pipelines", "transformers_version", "_commit_hash"}

    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items() if key not in ignored}
        return value

    digest = hashlib.sha256(json.dumps(clean(model.config.to_dict()), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().data)
    return digest.hexdigest()


class ImageTower(nn.Module):
    """pixel_values -> the projected image embeddings (not normalised): the image side alone, for export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values).pooler_output


class TextTower(nn.Module):
    """input_ids, attention_mask -> the projected text embeddings (not normalised): the text side alone."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids, attention_mask).pooler_output


def onnx_cache_root(model):
    """Where a model's exported towers live: `onnx/` in its folder when that is a writable local folder, else
    `$VICLIP_OT_CACHE` (default `~/.cache/viclip-ot`)`/onnx`."""
    folder = Path(str(getattr(model, "name_or_path", "") or ""))
    if str(folder) and folder.is_dir() and os.access(folder, os.W_OK):
        return folder / "onnx"
    return Path(os.environ.get("VICLIP_OT_CACHE", Path.home() / ".cache" / "viclip-ot")) / "onnx"


def export_int8_tower(model, kind, path):
    """Export the `kind` ("image" / "text") tower of `model` to ONNX (torch.onnx's exporter, dynamic batch and
    length) and quantise its weights to int8 (ONNX Runtime's dynamic quantisation) into `path`, written atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    if kind == "image":
        size = model._processor_or_error().image_processor.crop_size  # the side of every image the tower is fed
        tower, inputs = ImageTower(model), {"pixel_values": torch.zeros(2, 3, size, size)}
        dynamic_shapes = {"pixel_values": {0: batch}}
    else:
        ids = torch.full((2, 8), 5)
        tower, inputs = TextTower(model), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        length = torch.export.Dim("length")
        dynamic_shapes = {name: {0: batch, 1: length} for name in inputs}
    fp32_path, int8_path = path.with_suffix(".fp32.tmp"), path.with_suffix(".int8.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                tower.eval(),
                (),
                str(fp32_path),
                kwargs=inputs,
                input_names=list(inputs),
                output_names=["embeds"],
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
            )
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        os.replace(int8_path, path)
    finally:
        for temporary in (fp32_path, int8_path, Path(str(fp32_path) + ".data")):
            temporary.unlink(missing_ok=True)


def int8_session(model, kind, cache_root=None):
    """An ONNX Runtime session of the int8 `kind` tower of `model`, exported on first use into
    `<cache_root>/<fingerprint>/<kind>-int8.onnx` (`onnx_cache_root` by default); a model whose weights or config
    changed has another fingerprint and is exported again (the folders of older fingerprints are removed)."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("backend='onnx-int8' needs ONNX Runtime: pip install 'viclip-ot[fast]'") from error
    root = Path(cache_root) if cache_root is not None else onnx_cache_root(model)
    fingerprint = model_fingerprint(model)[:16]
    path = root / fingerprint / f"{kind}-int8.onnx"
    if not path.is_file():
        logger.warning(f"exporting the {kind} tower to int8 ONNX in {path} (once per model)")
        export_int8_tower(model, kind, path)
        for stale in root.iterdir():
            if stale.is_dir() and stale.name != fingerprint and any(stale.glob("*-int8.onnx")):
                shutil.rmtree(stale)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ViCLIPOTOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): the multi-positive CLIP (or SigLIP) loss, when `return_loss=True`.
    logits_per_image (`torch.FloatTensor` of shape `(num_images, num_captions)`): scaled cosine similarities
        (plus the bias of a SigLIP model).
    logits_per_text (`torch.FloatTensor` of shape `(num_captions, num_images)`): the transpose.
    text_embeds (`torch.FloatTensor` of shape `(num_captions, projection_dim)`): L2-normalised text embeddings.
    image_embeds (`torch.FloatTensor` of shape `(num_images, projection_dim)`): L2-normalised image embeddings.
    text_model_output, vision_model_output (`BaseModelOutputWithPooling`): the towers' outputs; `pooler_output`
        holds the projected, not yet normalised, embeddings.
    scale (`torch.FloatTensor`, 0-d): the scale s = exp(logit_scale) the logits use; bias: the logit bias of a
        SigLIP model (the parameter itself; `None` without one). A training loss takes both from here, so that they
        are part of the forward's graph (what DDP's unused-parameter detection sees).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    scale: torch.FloatTensor | None = None
    bias: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple[Any]:
        return tuple(
            self[k] if k not in ("text_model_output", "vision_model_output") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


# timm arguments the model sets itself (a headless tower pooled as the config says).
TIMM_HEAD_ARGS = ("num_classes", "global_pool")


def build_vision_head(kind, in_dim, out_dim, dropout, bias=False):
    """`linear`: Dropout -> Linear; `mlp`: Linear -> GELU -> Dropout -> Linear; `none`: identity. `bias` is the
    last Linear's."""
    if kind == "none":
        if in_dim != out_dim:
            raise ValueError(
                f"vision_head='none' needs the image tower's width ({in_dim}) == projection_dim ({out_dim})"
            )
        return nn.Identity()
    if kind == "linear":
        layers = [("drop", nn.Dropout(dropout)), ("proj", nn.Linear(in_dim, out_dim, bias=bias))]
    else:
        hidden = 2 * out_dim
        layers = [
            ("fc", nn.Linear(in_dim, hidden)),
            ("act", nn.GELU()),
            ("drop", nn.Dropout(dropout)),
            ("proj", nn.Linear(hidden, out_dim, bias=bias)),
        ]
    return nn.Sequential(OrderedDict(layers))


def build_text_projection(kind, in_dim, out_dim, bias=False):
    """A linear map, or the identity (`auto` picks the identity when the widths already agree)."""
    if kind == "none" or (kind == "auto" and in_dim == out_dim):
        if in_dim != out_dim:
            raise ValueError(
                f"text_projection='none' needs the text tower's width ({in_dim}) == projection_dim ({out_dim})"
            )
        return nn.Identity()
    return nn.Linear(in_dim, out_dim, bias=bias)


def create_image_tower(config):
    """The timm image tower of `config` (random weights), headless, pooled as `config.vision_pooling` (set after
    creation, as `load_image_tower` does, so that both have the same layout)."""
    if not timm.is_model(config.vision_model_name):
        raise ValueError(
            f"unknown timm image tower {config.vision_model_name!r}; `timm.list_models()` lists the architectures"
        )
    tower = timm.create_model(config.vision_model_name, num_classes=0, **config.vision_model_kwargs)
    tower.reset_classifier(0, global_pool=config.vision_pooling)
    return tower


def create_text_tower(text_config):
    """The transformers text tower of `text_config` (random weights), without its unused pooler layer."""
    try:
        return AutoModel.from_config(text_config, add_pooling_layer=False)
    except TypeError:  # a model class without a pooler option (no public way to ask the class beforehand)
        return AutoModel.from_config(text_config)


def load_image_tower(source, pooling="avg", architecture=None, **timm_kwargs):
    """A pretrained timm image tower loaded by timm from `source`, headless and pooled as `pooling`.

    `source` is a timm name with its pretrained tag (`vit_base_patch16_dinov3.lvd1689m`), `hf-hub:<repo>`,
    `local-dir:<folder>` or a folder in timm's Hub layout (`config.json` + weights; its `model_args` apply), or a
    weights file for `architecture`. Any failure is one `ValueError` naming the source.
    """
    source = str(source)
    if Path(source).is_file():
        if not architecture:
            raise ValueError(f"give vision_model_name=<timm architecture> for the weights file {source}")
        name, timm_kwargs = architecture, {**timm_kwargs, "pretrained_cfg_overlay": {"file": source}}
    elif Path(source).is_dir():
        if not Path(source, "config.json").is_file():
            raise ValueError(f"{source} is no timm model folder: {Path(source, 'config.json')} is missing")
        name = f"local-dir:{source}"
    elif source.startswith(("hf-hub:", "local-dir:")) or timm.is_model(source.split(".")[0]):
        name = source
    else:
        raise ValueError(f"unknown timm image tower {source!r} (and no such file or folder)")
    try:
        tower = timm.create_model(name, pretrained=True, num_classes=0, **timm_kwargs)
    except (OSError, RuntimeError, ValueError, KeyError) as error:  # offline and uncached, other architecture, ...
        raise ValueError(f"cannot load the image tower {source!r}: {type(error).__name__}: {error}") from error
    # Pooling is set after loading, as open_clip does: created with another pooling, some towers (ViT) would
    # swap their final norm for an unloaded one.
    tower.reset_classifier(0, global_pool=pooling)
    return tower


def load_text_tower(source):
    """A pretrained transformers text tower without its pooler; a tower lacking weights is one `ValueError`."""
    source = str(source)
    try:
        model, info = AutoModel.from_pretrained(source, add_pooling_layer=False, output_loading_info=True)
    except TypeError:  # a model class without a pooler option
        model, info = AutoModel.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the text tower {source!r}: {error}") from error
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ValueError(f"the text tower {source!r} lacks {len(missing)} weights, e.g. {missing[:3]}")
    return model


class ViCLIPOTModel(PreTrainedModel):
    r"""ViCLIP-OT dual encoder. Images: timm tower -> pooling -> head; texts: transformers tower -> masked mean
    (or CLS) pooling -> optional projection; both L2-normalised. Load it with
    `AutoModel.from_pretrained(path, trust_remote_code=True)`, or build one from pretrained towers with
    [`ViCLIPOTModel.from_towers`].
    """

    config_class = ViCLIPOTConfig
    base_model_prefix = "viclip_ot"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    accepts_loss_kwargs = False

    def __init__(self, config: ViCLIPOTConfig, vision_model: nn.Module | None = None, text_model=None):
        """`vision_model` (timm) and `text_model` (transformers) are pretrained towers to use as they are; without
        them the towers are built from `config` with random weights."""
        super().__init__(config)
        self.vision_model = create_image_tower(config) if vision_model is None else vision_model
        vision_width = getattr(self.vision_model, "head_hidden_size", None) or self.vision_model.num_features
        self.vision_head = build_vision_head(
            config.vision_head, vision_width, config.projection_dim, config.vision_head_dropout, config.vision_head_bias
        )
        self.text_model = create_text_tower(config.text_config) if text_model is None else text_model
        self.text_projection = build_text_projection(
            config.text_projection, config.text_config.hidden_size, config.projection_dim, config.text_projection_bias
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        bias = config.logit_bias_init_value
        self.logit_bias = None if bias is None else nn.Parameter(torch.tensor(float(bias)))
        self.processor = None  # a ViCLIPOTProcessor: set by from_towers and from_pretrained, used by encode_*
        self.encode_backend = "torch"  # the default `backend` of encode_image / encode_text (`ENCODE_BACKENDS`)
        self._int8_sessions = {}  # kind -> ONNX Runtime session of the current weights (dropped by train())
        self.post_init()

    def train(self, mode=True):
        """`nn.Module.train`; training mode also drops the int8 towers, whose weights would go stale."""
        if mode:
            self._int8_sessions = {}
        return super().train(mode)

    @torch.no_grad()
    def _init_weights(self, module):
        """Only the heads and the logit scale/bias are initialised here: the towers keep their own (timm's, or
        the text model's) initialisation or their pretrained weights. Non-persistent buffers such as DINOv3's
        RoPE periods are recomputed, since loading leaves them empty."""
        if module is self:
            init.constant_(self.logit_scale, self.config.logit_scale_init_value)
            if self.logit_bias is not None:
                init.constant_(self.logit_bias, self.config.logit_bias_init_value)
        elif hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
        elif isinstance(module, nn.Linear) and self._is_head_layer(module):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _is_head_layer(self, module):
        return any(module is layer for head in (self.vision_head, self.text_projection) for layer in head.modules())

    def _set_gradient_checkpointing(self, enable=True, gradient_checkpointing_func=None, every_n_layers=1):
        """Checkpoint both towers (called by `activation_checkpointing_enable` / `_disable`)."""
        self.vision_model.set_grad_checkpointing(enable)
        kwargs = (
            {} if gradient_checkpointing_func is None else {"gradient_checkpointing_func": gradient_checkpointing_func}
        )
        self.text_model._set_gradient_checkpointing(enable=enable, every_n_layers=every_n_layers, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # Features
    # ----------------------------------------------------------------------------------------------------------

    def get_image_features(self, pixel_values) -> BaseModelOutputWithPooling:
        """`last_hidden_state`: the image tower's `forward_features`; `pooler_output`: pooled and projected,
        not yet normalised."""
        pixel_values = pixel_values.to(self._vision_dtype)
        features = self.vision_model.forward_features(pixel_values)
        pooled = self.vision_model.forward_head(features, pre_logits=True)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=self.vision_head(pooled))

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None) -> BaseModelOutputWithPooling:
        """`last_hidden_state`: the text tower's token states; `pooler_output`: pooled and projected, not yet
        normalised."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **({} if token_type_ids is None else {"token_type_ids": token_type_ids}),
        )
        hidden = outputs.last_hidden_state
        if self.config.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.text_projection(pooled))

    @property
    def _vision_dtype(self):
        return next(self.vision_model.parameters()).dtype

    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        caption_image_index=None,
        return_loss=None,
        return_logits=True,
        return_dict=None,
    ) -> ViCLIPOTOutput:
        r"""
        caption_image_index (`torch.LongTensor` of shape `(num_captions,)`, *optional*): the image (row of
            `pixel_values`) each caption describes; defaults to caption k <-> image k.
        return_loss (`bool`, *optional*): compute the multi-positive CLIP loss (SigLIP for a model with a
            logit bias).
        return_logits (`bool`, *optional*, defaults to `True`): build the caption x image logits (a training step
            that computes its own loss from the embeddings and the output's `scale` and `bias` skips them).

        With only `pixel_values` (or only `input_ids`) just that side is encoded: the output holds its embeddings
        and no logits (what the `image-feature-extraction` pipeline calls).
        """
        if pixel_values is None and input_ids is None:
            raise ValueError("give `pixel_values`, `input_ids` or both")
        vision_outputs = text_outputs = image_embeds = text_embeds = logits_per_text = loss = None
        if pixel_values is not None:
            vision_outputs = self.get_image_features(pixel_values)
            image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        if input_ids is not None:
            text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids)
            text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        scale = self.logit_scale.exp()
        if image_embeds is not None and text_embeds is not None and (return_logits or return_loss):
            logits_per_text = scale * text_embeds @ image_embeds.T
            if self.logit_bias is not None:
                logits_per_text = logits_per_text + self.logit_bias
        if return_loss:
            if logits_per_text is None:
                raise ValueError("return_loss=True needs both `pixel_values` and `input_ids`")
            if caption_image_index is None:
                caption_image_index = torch.arange(text_embeds.shape[0], device=text_embeds.device)
            check_caption_image_index(caption_image_index, image_embeds.shape[0], text_embeds.shape[0])
            loss_scale = self.logit_scale.float().exp()
            loss = contrastive_loss(image_embeds, text_embeds, caption_image_index, loss_scale, self.logit_bias)
        output = ViCLIPOTOutput(
            loss=loss,
            logits_per_image=None if logits_per_text is None else logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            scale=scale,
            bias=self.logit_bias,
        )
        return output if return_dict is not False else output.to_tuple()

    @torch.no_grad()
    def clamp_logit_scale(self):
        """Keep the scale exp(logit_scale) within the config's bounds (call after each optimizer step)."""
        low, high = torch.tensor([self.config.logit_scale_min, self.config.logit_scale_max]).log().tolist()
        self.logit_scale.clamp_(low, high)

    # ----------------------------------------------------------------------------------------------------------
    # Encoding lists of images and texts
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the processor saved beside the weights (for `encode_image`,
        `encode_text` and a complete `save_pretrained`)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        model.processor = load_saved_processor(pretrained_model_name_or_path, model.config, **hub_kwargs)
        return loaded

    def _processor_or_error(self):
        if self.processor is None:
            raise ValueError(
                "this model has no processor: load it with from_pretrained from a complete folder, build it with "
                "from_towers, or set `model.processor = ViCLIPOTProcessor(...)`"
            )
        return self.processor

    @torch.no_grad()
    def encode_image(self, images, batch_size=32, show_progress_bar=None, backend=None) -> torch.Tensor:
        """L2-normalised float32 embeddings (on the CPU) of PIL images or image paths, `batch_size` at a time.
        `backend`: one of `ENCODE_BACKENDS` (default `self.encode_backend`, "torch")."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        return self._encode(list(images), batch_size, show_progress_bar, "image", backend)

    @torch.no_grad()
    def encode_text(self, texts, batch_size=32, show_progress_bar=None, backend=None) -> torch.Tensor:
        """L2-normalised float32 embeddings (on the CPU) of texts, `batch_size` at a time, one row per text in input
        order. Texts are batched longest first (by characters), so each batch pads little. `backend` as in
        `encode_image`."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        order = sorted(range(len(texts)), key=lambda row: -len(texts[row]))
        embeds = self._encode([texts[row] for row in order], batch_size, show_progress_bar, "text", backend)
        return embeds[torch.argsort(torch.tensor(order, dtype=torch.long))]

    @torch.no_grad()
    def encode_pixel_values(self, pixel_values, backend=None) -> torch.Tensor:
        """L2-normalised float32 embeddings (on the CPU) of a batch of preprocessed images (`pixel_values` as the
        processor makes them), through `backend` as in [`encode_image`]."""
        was_training = self.training
        self.eval()
        embeds = self._batch_encoder("image", backend)({"pixel_values": pixel_values})
        self.train(was_training)
        return embeds

    def _batch_encoder(self, kind, backend):
        """A function from one batch of processor outputs (`kind` "image" or "text") to L2-normalised float32
        embeddings on the CPU, through `backend` (default `self.encode_backend`)."""
        backend = backend or self.encode_backend
        if backend not in ENCODE_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {ENCODE_BACKENDS}")
        if backend == "onnx-int8":
            if kind not in self._int8_sessions:
                self._int8_sessions[kind] = int8_session(self, kind)
            session = self._int8_sessions[kind]
            names = [node.name for node in session.get_inputs()]

            def embed(inputs):
                embeds = torch.from_numpy(session.run(None, {name: inputs[name].cpu().numpy() for name in names})[0])
                return F.normalize(embeds.float(), dim=-1)

            return embed
        dtype = autocast_dtype(backend, self.device)
        features = self.get_image_features if kind == "image" else self.get_text_features

        def embed(inputs):
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                embeds = features(**{name: value.to(self.device) for name, value in inputs.items()}).pooler_output
            return F.normalize(embeds.float(), dim=-1).cpu()

        return embed

    def _encode(self, items, batch_size, show_progress_bar, kind, backend):
        processor = self._processor_or_error()
        was_training = self.training
        self.eval()
        embed = self._batch_encoder(kind, backend)

        def embed_items(batch):
            return embed(processor(images=batch) if kind == "image" else processor(text=batch))

        embeds = encode_in_batches(
            embed_items, items, batch_size, show_progress_bar, f"encoding {kind}s", self.config.projection_dim
        )
        self.train(was_training)
        return embeds

    # ----------------------------------------------------------------------------------------------------------
    # Building from pretrained towers, saving
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_towers(
        cls, vision_model_name_or_path, text_model_name_or_path, crop_size=224, word_segmentation=False, **config_kwargs
    ):
        """A new model whose towers hold pretrained weights; the heads are freshly initialised.

        Args:
            vision_model_name_or_path: what timm loads: a timm name with its pretrained tag
                (`vit_base_patch16_dinov3.lvd1689m`), `hf-hub:<repo>` (e.g.
                `hf-hub:timm/convnext_base.dinov3_lvd1689m`),
                a local folder in timm's Hub layout (`config.json` with its `model_args` + weights), or a weights file
                (`.safetensors`, `.pth`, `.bin`) for the architecture given as `vision_model_name=...`.
            text_model_name_or_path: a transformers model name or folder (a sentence-transformers folder too: its
                pooling mode and maximum sequence length are read).
            crop_size: side of the square crop the processor feeds the image tower.
            word_segmentation: segment Vietnamese words before tokenising (PhoBERT towers).
            config_kwargs: any other [`ViCLIPOTConfig`] field; `vision_model_kwargs` go to `timm.create_model`.
        """
        processing = _processing_module()
        # The tokenizer first: a tower without one fails before any weights are read.
        processor = processing.ViCLIPOTProcessor.from_text_tower(
            text_model_name_or_path, crop_size=crop_size, word_segmentation=word_segmentation
        )
        settings = processing.read_sentence_transformers_settings(str(text_model_name_or_path))
        if "text_pooling" in settings:
            config_kwargs.setdefault("text_pooling", settings["text_pooling"])

        extra_timm_kwargs = dict(config_kwargs.pop("vision_model_kwargs", None) or {})
        vision_model = load_image_tower(
            vision_model_name_or_path,
            config_kwargs.get("vision_pooling", "avg"),
            config_kwargs.get("vision_model_name"),
            **extra_timm_kwargs,
        )
        text_model = load_text_tower(text_model_name_or_path)
        # The tower's saved model_args (a resized or fine-tuned export) and the caller's, so the config rebuilds it.
        model_args = {k: v for k, v in vision_model.pretrained_model_args.items() if k not in TIMM_HEAD_ARGS}
        config = ViCLIPOTConfig(
            vision_model_kwargs={**model_args, **extra_timm_kwargs},
            text_config=text_model.config.to_dict(),
            **{"vision_model_name": vision_model.pretrained_cfg["architecture"], **config_kwargs},
        )
        model = cls(config, vision_model=vision_model, text_model=text_model)
        model.processor = processor
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (safetensors), config, code, the processor and the sentence-transformers files: a folder that
        loads on its own in `AutoModel`, `AutoProcessor` and `SentenceTransformer`."""
        processor = self._processor_or_error()
        super().save_pretrained(save_directory, *args, **kwargs)
        processor.save_pretrained(save_directory)
        write_sentence_transformers_files(save_directory)


def _processing_module():
    """`processing_viclip_ot`, imported when needed: loading the weights needs no image or text processing."""
    if __package__:
        from .processing_viclip_ot import ViCLIPOTProcessor  # noqa: F401  (also makes transformers copy the file)

        return sys.modules[f"{__package__}.processing_viclip_ot"]
    return importlib.import_module("processing_viclip_ot")


def load_saved_processor(name_or_path, config=None, **hub_kwargs):
    """The `ViCLIPOTProcessor` saved with a model (folder or Hub repo), or None for a folder that has none. Its parts
    are built with the classes beside this file and the tokenizer's own class (given the model's `config`, the
    tokenizer needs no other config): no code saved in `name_or_path` runs."""
    if Path(name_or_path).is_dir() and not Path(name_or_path, PROCESSOR_NAME).is_file():
        return None
    processing = _processing_module()
    return processing.ViCLIPOTProcessor.from_pretrained(
        name_or_path,
        image_processor=processing.ViCLIPOTImageProcessor.from_pretrained(name_or_path, **hub_kwargs),
        tokenizer=AutoTokenizer.from_pretrained(name_or_path, config=config, **hub_kwargs),
        **hub_kwargs,
    )


def write_sentence_transformers_files(save_directory):
    """Make the saved folder load with `SentenceTransformer(folder, trust_remote_code=True)`: a Transformer module
    that calls `get_text_features` / `get_image_features`, then L2 normalisation."""
    folder = Path(save_directory)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.base.modules.Normalize"},
    ]
    transformer = {
        "transformer_task": "feature-extraction",
        "modality_config": {
            "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
            "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
        },
        "module_output_name": "sentence_embedding",
    }
    (folder / "1_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps(transformer, indent=2))
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"model_type": "SentenceTransformer", "similarity_fn_name": "cosine"}, indent=2)
    )


ViCLIPOTConfig.register_for_auto_class()
ViCLIPOTModel.register_for_auto_class("AutoModel")
