"""`viclip_ot.convert`: the authors' released models and training checkpoints (offline replicas, tests/replicas.py)
converted to this project's format, with the embeddings computed directly from their weights."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import CAPTIONS
from replicas import authors_checkpoint, authors_release, images
from transformers import AutoModel, AutoProcessor, AutoTokenizer

from viclip_ot.cli import run
from viclip_ot.convert import AuthorsFormatError, load_authors_model
from viclip_ot.convert import main as convert_main


def authors_embeddings(state_dict, config, sbert_dir, vision_dir, pixels, texts):
    """Embeddings computed directly from the release's weights: the timm trunk's patch-token mean through the head;
    the text encoder's masked token mean through `fc`; both L2-normalised."""
    trunk = timm.create_model(f"local-dir:{vision_dir}", num_classes=0).eval()
    trunk.load_state_dict(
        {k.removeprefix("vision_model.trunk."): v for k, v in state_dict.items() if k.startswith("vision_model.trunk.")}
    )
    encoder = AutoModel.from_pretrained(sbert_dir).eval()
    encoder.load_state_dict(
        {k.removeprefix("text_model.encoder."): v for k, v in state_dict.items() if k.startswith("text_model.encoder.")}
    )
    with torch.no_grad():
        tokens = trunk.forward_features(pixels)
        pooled = tokens[:, trunk.num_prefix_tokens :].mean(dim=1)
        if config["vision_config"]["proj"] == "linear":
            image = F.linear(
                pooled, state_dict["vision_model.head.proj.weight"], state_dict.get("vision_model.head.proj.bias")
            )
        else:
            hidden = F.gelu(
                F.linear(
                    pooled, state_dict["vision_model.head.mlp.fc1.weight"], state_dict["vision_model.head.mlp.fc1.bias"]
                )
            )
            image = F.linear(
                hidden, state_dict["vision_model.head.mlp.fc2.weight"], state_dict.get("vision_model.head.mlp.fc2.bias")
            )
        inputs = AutoTokenizer.from_pretrained(sbert_dir)(texts, padding=True, return_tensors="pt")
        hidden = encoder(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        text = (hidden * mask).sum(1) / mask.sum(1)
        if config["text_config"]["proj"] == "linear":
            text = F.linear(text, state_dict["text_model.fc.weight"], state_dict.get("text_model.fc.bias"))
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "vision_proj, text_proj, proj_bias, logit_bias",
    [
        ("linear", "linear", False, None),  # ViCLIP-OT
        ("mlp", "linear", True, -10.0),  # ViSigLIP-OT with the mlp head and biases
        ("linear", "none", False, None),
    ],
)
def test_authors_release_converts_to_equal_embeddings(
    vision_proj, text_proj, proj_bias, logit_bias, tower_dirs, sbert_dir, tmp_path
):
    vision_dir = tower_dirs["dinov3-resized"][0]
    embed_dim = 32 if text_proj == "none" else 16
    release, state_dict = authors_release(
        tmp_path / "ViCLIP-OT",
        sbert_dir,
        vision_dir,
        embed_dim=embed_dim,
        vision_proj=vision_proj,
        text_proj=text_proj,
        proj_bias=proj_bias,
        logit_bias=logit_bias,
    )
    config = json.loads((release / "config.json").read_text())
    pixels = images()
    expected_images, expected_texts = authors_embeddings(state_dict, config, sbert_dir, vision_dir, pixels, CAPTIONS)

    checkpoint = authors_checkpoint(tmp_path / "viclip_ot_best.pth", state_dict)
    sources = [release, checkpoint]
    for source in sources:
        extra = {} if source == release else {"text_tower": str(sbert_dir), "image_tower": str(vision_dir)}
        model = load_authors_model(source, **extra)
        with torch.no_grad():
            got_images = F.normalize(model.get_image_features(pixels).pooler_output, dim=-1)
        torch.testing.assert_close(got_images, expected_images, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(CAPTIONS), expected_texts, atol=1e-5, rtol=0)
        assert model.logit_scale.item() == pytest.approx(2.6592)
        assert (model.logit_bias is None) == (logit_bias is None)

    # the command line writes a folder that loads on its own
    output = tmp_path / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "viclip_ot.convert", str(release), str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    torch.testing.assert_close(loaded.encode_text(CAPTIONS), expected_texts, atol=1e-5, rtol=0)
    with torch.no_grad():
        out = loaded(**processor(text=CAPTIONS[:1]), pixel_values=pixels)
    torch.testing.assert_close(out.image_embeds, expected_images, atol=1e-5, rtol=0)

    # converting again replaces the folder only when asked to
    (output / "stale.bin").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert_main([str(release), str(output)])
    convert_main([str(release), str(output), "--overwrite"])
    assert not (output / "stale.bin").exists() and (output / "model.safetensors").is_file()


@pytest.mark.slow
def test_authors_weights_of_no_known_part_or_missing_are_clear_errors(tower_dirs, sbert_dir, tmp_path):
    vision_dir = tower_dirs["dinov3-resized"][0]
    _, state_dict = authors_release(tmp_path / "release", sbert_dir, vision_dir)
    towers = {"text_tower": str(sbert_dir), "image_tower": str(vision_dir)}
    extra = authors_checkpoint(tmp_path / "extra.pth", {**state_dict, "vision_model.extra.weight": torch.zeros(1)})
    with pytest.raises(AuthorsFormatError, match="image_encoder.extra.weight|vision_model.extra.weight"):
        load_authors_model(extra, **towers)
    command = [
        sys.executable,
        "-m",
        "viclip_ot.convert",
        str(extra),
        str(tmp_path / "out"),
        "--text-tower",
        str(sbert_dir),
        "--image-tower",
        str(vision_dir),
    ]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m viclip_ot.convert: error: ")
    assert not (tmp_path / "out").exists()
    del state_dict["vision_model.trunk.cls_token"]
    missing = authors_checkpoint(tmp_path / "missing.pth", state_dict)
    with pytest.raises(AuthorsFormatError, match="1 missing weights.*vision_model.cls_token"):
        load_authors_model(missing, **towers)


def test_a_checkpoint_without_model_state_dict_is_a_user_error(tmp_path, capsys):
    checkpoint = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, checkpoint)
    with pytest.raises(AuthorsFormatError, match="has no 'model_state_dict'") as raised:
        load_authors_model(checkpoint)
    assert isinstance(raised.value, ValueError)  # the user errors every command reports in one line
    with pytest.raises(SystemExit) as exited:
        run(convert_main, [str(checkpoint), str(tmp_path / "out")], prog="convert")
    assert exited.value.code == 2
    expected = f"{checkpoint} is no authors' training checkpoint: it has no 'model_state_dict'"
    assert capsys.readouterr().err == f"convert: error: {expected}\n"
    assert not (tmp_path / "out").exists()
