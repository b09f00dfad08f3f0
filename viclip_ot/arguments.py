"""Options of `train.py`: model and data fields, the loss's `LossSettings`, and transformers' `TrainingArguments`.

A YAML config gives any of them; command-line flags override it (`--learning_rate 1e-4`).
"""

import dataclasses
import inspect
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

from configuration_viclip_ot import ViCLIPOTConfig

from .losses import LossSettings


def config_default(name):
    """The default of a `ViCLIPOTConfig` field, so that an option named after it defaults to the same value."""
    return inspect.signature(ViCLIPOTConfig).parameters[name].default


def parse_json_options(arguments, names):
    """Turn the JSON strings given on the command line for the dict options `names` into dicts (a YAML config
    gives dicts already; unset is an empty dict)."""
    for name in names:
        value = getattr(arguments, name)
        if value is None:
            value = {}
        elif isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"--{name}: not a JSON object: {value!r} ({error})") from None
        if not isinstance(value, dict):
            raise ValueError(f"--{name}: expected a JSON object, got {value!r}")
        setattr(arguments, name, value)


@dataclass
class ModelArguments:
    """The model's options; those named after a [`ViCLIPOTConfig`] field set that field (`config_kwargs`)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a saved ViCLIP-OT model (Hub id or folder); towers are ignored."}
    )
    vision_tower: str = field(
        default="vit_base_patch16_dinov3.lvd1689m",
        metadata={"help": "timm name with pretrained tag, hf-hub:<repo>, timm folder, or weights file."},
    )
    text_tower: str = field(default="keepitreal/vietnamese-sbert", metadata={"help": "transformers name or folder."})
    small_towers: bool = field(
        default=False,
        metadata={
            "help": "Build small random towers instead (DINOv3 layout; a BERT with a tokenizer trained on the "
            "training captions): the demo, or a smoke test."
        },
    )
    small_text_tower_kwargs: dict | str | None = field(
        default=None, metadata={"help": "JSON of save_small_text_tower arguments (hidden_size, num_layers, ...)."}
    )
    vision_model_name: str | None = field(default=None, metadata={"help": "timm architecture for a weights file."})
    vision_model_kwargs: dict | str | None = field(
        default=None, metadata={"help": "JSON of extra timm.create_model arguments."}
    )
    vision_pooling: str = config_default("vision_pooling")
    vision_head: str = config_default("vision_head")
    vision_head_dropout: float = config_default("vision_head_dropout")
    image_size: int = field(
        default=224,
        metadata={"help": "Side of the square crop the processor feeds the image tower (small towers too)."},
    )
    text_pooling: str | None = field(default=None, metadata={"help": "mean or cls (default: the tower's own)."})
    text_projection: str = field(
        default=config_default("text_projection"), metadata={"help": "auto (only if widths differ), linear or none."}
    )
    projection_dim: int = config_default("projection_dim")
    logit_scale_init_value: float = field(
        default=config_default("logit_scale_init_value"), metadata={"help": "Initial log of the logit scale."}
    )
    logit_bias_init_value: float | None = field(default=None, metadata={"help": "Set (e.g. -10) for a SigLIP model."})
    word_segmentation: bool = field(default=False, metadata={"help": "Segment Vietnamese words (PhoBERT towers)."})

    def __post_init__(self):
        parse_json_options(self, ("small_text_tower_kwargs", "vision_model_kwargs"))

    def config_kwargs(self):
        """The [`ViCLIPOTConfig`] fields these arguments set: those named after one, unless None (unset)."""
        names = inspect.signature(ViCLIPOTConfig).parameters
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name in names}
        return {name: value for name, value in values.items() if value is not None}


@dataclass
class DataArguments:
    dataset: str = field(
        default="uit-openviic", metadata={"help": "uit-openviic, ktvic, crossmodal3600, json or demo."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "The corpus folder; --data_dir '' unsets a config's."})
    train_split: str = "train"
    eval_split: str | None = field(default="validation", metadata={"help": "Split for validation (none: skip)."})
    test_split: str | None = field(default=None, metadata={"help": "Split evaluated before and after training."})
    corpus_options: dict | str | None = field(
        default=None, metadata={"help": 'JSON of corpus options, e.g. {"language": "vi"}.'}
    )
    teacher_embeddings: str | None = field(default=None, metadata={"help": "Teacher file of the train split."})
    max_train_images: int | None = None
    max_eval_images: int | None = None
    horizontal_flip: bool = field(
        default=True, metadata={"help": "Flip training images (off when captions say left/right)."}
    )

    def __post_init__(self):
        parse_json_options(self, ("corpus_options",))
        if self.data_dir == "":  # unset from the command line (e.g. a paper config with --dataset demo)
            self.data_dir = None


@dataclass
class ViCLIPOTTrainingArguments(TrainingArguments):
    head_learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of heads, logit scale and bias."})
    gradcache_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Images per chunk of gradient caching (a contrastive batch is per_device_train_batch_size "
            "images on every process); none: encode the batch at once."
        },
    )
    warmup_start_factor: float = field(default=0.01, metadata={"help": "Warm-up starts at this fraction of the lr."})
    freeze_image_blocks: int = field(
        default=0,
        metadata={
            "help": "Freeze the image tower's stem and first N layer groups (timm's group_matcher: a ViT's "
            "blocks, a ConvNeXt's blocks with their downsampling)."
        },
    )
    freeze_text_tower: bool = False

    def __post_init__(self):
        bf16_device = is_torch_bf16_gpu_available() or is_torch_xla_available()
        if (self.bf16 or self.bf16_full_eval) and not self.use_cpu and not bf16_device:
            warnings.warn("bf16: no GPU here supports bf16, so this run trains and evaluates in fp32", stacklevel=2)
            self.bf16 = self.bf16_full_eval = False
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataArguments, LossSettings, ViCLIPOTTrainingArguments)


def read_config(path, _chain=()):
    """A YAML config's values; `base: other.yaml` (relative to the file) supplies the values it does not set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}" + (f" (the base of {_chain[-1]})" if _chain else ""))
    if path.resolve() in _chain:
        cycle = " -> ".join(str(file) for file in (*_chain, path.resolve()))
        raise ValueError(f"{path}: the base: chain is a cycle: {cycle}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: malformed YAML: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got a {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ValueError(f"{path}: base: must be one file name, got {base!r}")
    return {**read_config(path.parent / base, (*_chain, path.resolve())), **values}


def parse_arguments(argv):
    """`argv` = [config.yaml] [--field value ...]: the YAML's values, overridden by the flags."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if argv and argv[0].endswith((".yaml", ".yml")):
        values = read_config(argv[0])
        known = {field.name for arguments in ARGUMENT_CLASSES for field in dataclasses.fields(arguments)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{argv[0]}: unknown options {unknown}")
        parser.set_defaults(**values)  # dict options stay dicts: argparse converts only string defaults
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)
