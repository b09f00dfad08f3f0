"""Convert the authors' training checkpoints (`.pth` with `model_state_dict`) into a saved ViCLIP-OT folder.

    python -m viclip_ot.convert checkpoint.pth outputs/viclip-ot --text-tower keepitreal/vietnamese-sbert

The text tower (a Hub id or a local folder) provides the tokenizer and the text config; the image tower is
`vit_base_patch16_dinov3` unless `--vision-model` says otherwise.
"""

import argparse

import torch
from transformers import AutoConfig

from configuration_viclip_ot import ViCLIPOTConfig
from modeling_viclip_ot import ViCLIPOTModel
from processing_viclip_ot import ViCLIPOTImageProcessor, ViCLIPOTProcessor

# The authors' key prefixes and ours.
KEY_PREFIXES = {
    "image_encoder.trunk.": "vision_model.",
    "image_encoder.head.proj.": "vision_head.proj.",
    "text_encoder.encoder.": "text_model.",
    "logit_scale": "logit_scale",
    "logit_bias": "logit_bias",
}
# Keys the authors saved that this model has no use for: the text tower's unused pooler and old buffers.
DROPPED_KEYS = ("text_encoder.encoder.pooler.", "text_encoder.encoder.embeddings.position_ids")


def rename_authors_state_dict(state_dict):
    """The authors' state dict with this model's key names; keys of no known part are an error."""
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith(DROPPED_KEYS):
            continue
        prefix = next((p for p in KEY_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
        else:
            renamed[KEY_PREFIXES[prefix] + key[len(prefix) :]] = value
    if unknown:
        raise KeyError(f"{len(unknown)} checkpoint keys belong to no known part, e.g. {unknown[:5]}")
    return renamed


def load_authors_checkpoint(checkpoint_path, config):
    """A [`ViCLIPOTModel`] of `config` holding the weights of an authors' checkpoint file."""
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        raise KeyError(f"{checkpoint_path} is no authors' training checkpoint: it has no 'model_state_dict'")
    state_dict = rename_authors_state_dict(checkpoint["model_state_dict"])
    if "logit_bias" in state_dict and config.logit_bias_init_value is None:
        config.logit_bias_init_value = float(state_dict["logit_bias"])  # a SigLIP checkpoint
    model = ViCLIPOTModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{checkpoint_path} does not fit the model: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    model.load_state_dict(state_dict)
    return model


def convert(checkpoint_path, output_dir, text_tower, vision_model="vit_base_patch16_dinov3", **config_kwargs):
    """Write a loadable folder (weights, config, code, processor) for an authors' checkpoint."""
    text_config = AutoConfig.from_pretrained(text_tower)
    config = ViCLIPOTConfig(vision_model_name=vision_model, text_config=text_config.to_dict(), **config_kwargs)
    model = load_authors_checkpoint(checkpoint_path, config)
    processor = ViCLIPOTProcessor.from_text_tower(text_tower, crop_size=config.image_size)
    model.processor = processor
    model.save_pretrained(output_dir)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the authors' .pth file")
    parser.add_argument("output_dir")
    parser.add_argument("--text-tower", default="keepitreal/vietnamese-sbert", help="Hub id or folder")
    parser.add_argument("--vision-model", default="vit_base_patch16_dinov3", help="timm architecture")
    args = parser.parse_args(argv)
    convert(args.checkpoint, args.output_dir, args.text_tower, args.vision_model)
    print(f"saved {args.output_dir}")


if __name__ == "__main__":
    main()
