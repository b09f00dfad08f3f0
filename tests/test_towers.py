"""`ViCLIPOTModel.from_towers` on the real tower formats, as offline replicas (tests/replicas.py): timm Hub folders
with their model_args, a local dir or weights file, the vietnamese-sbert layout; a loaded model re-saved."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import CAPTIONS, VIETNAMESE_TEXTS
from replicas import DINOV3_SMALL, TOWERS, images, sbert_reference, timm_hub_folder, vietnamese_sbert
from transformers import AutoTokenizer

from modeling_viclip_ot import ViCLIPOTModel

# ---------------------------------------------------------------- from_towers on the real layouts


@pytest.mark.parametrize("tower", list(TOWERS))
def test_from_towers_reads_timm_folders_with_their_model_args(tower, tower_dirs, sbert_dir, tmp_path):
    folder, reference = tower_dirs[tower]
    model = ViCLIPOTModel.from_towers(
        folder,
        sbert_dir,
        crop_size=32,
        projection_dim=32,
        vision_head="none" if reference.num_features == 32 else "linear",
    ).eval()
    assert model.config.vision_model_name == TOWERS[tower][0]
    pixels = images()
    reference = copy.deepcopy(reference).eval()
    reference.reset_classifier(0, global_pool="avg")
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
        pooled = model.vision_model.forward_head(model.vision_model.forward_features(pixels), pre_logits=True)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.encode_text(CAPTIONS), sbert_reference(sbert_dir, CAPTIONS), atol=1e-5, rtol=0)
    assert model.vision_model is not None and sum(1 for _ in model.modules() if _ is model.vision_model) == 1

    model.save_pretrained(tmp_path / "saved")
    loaded = ViCLIPOTModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.get_image_features(pixels).pooler_output,
            model.get_image_features(pixels).pooler_output,
            rtol=0,
            atol=0,
        )


def test_from_towers_accepts_the_local_dir_and_weights_file_sources(tower_dirs, sbert_dir):
    folder, reference = tower_dirs["dinov3-resized"]
    for source, extra in (
        (f"local-dir:{folder}", {}),
        (
            folder / "model.safetensors",
            {"vision_model_name": "vit_small_patch16_dinov3", "vision_model_kwargs": DINOV3_SMALL},
        ),
    ):
        model = ViCLIPOTModel.from_towers(source, sbert_dir, crop_size=32, projection_dim=16, **extra)
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(model.vision_model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_long_captions_are_truncated_at_the_towers_positions(tmp_path):
    """A tower whose tokenizer states no maximum length and has no sentence_bert_config.json (bug 2)."""
    words = VIETNAMESE_TEXTS * 3
    plain = vietnamese_sbert(tmp_path / "phobert", words, sentence_transformers_files=False, model_max_length=None)
    assert AutoTokenizer.from_pretrained(plain).model_max_length > 1e6  # the tokenizer gives no limit
    folder, _ = timm_hub_folder(tmp_path / "dino", "vit_small_patch16_dinov3", DINOV3_SMALL)
    model = ViCLIPOTModel.from_towers(folder, plain, crop_size=32, projection_dim=16).eval()
    long_caption = " ".join(VIETNAMESE_TEXTS * 8)  # about 800 tokens; 258 positions = 256 tokens + RoBERTa's offset
    inputs = model.processor(text=[long_caption])
    assert inputs["input_ids"].shape[1] == 256
    truncated = model.processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    torch.testing.assert_close(model.encode_text(long_caption), model.encode_text(truncated), atol=1e-6, rtol=0)


def test_missing_tokenizer_uncached_tag_and_wrong_weights_are_clear_errors(tmp_path, tower_dirs, sbert_dir):
    no_tokenizer = vietnamese_sbert(tmp_path / "no-tokenizer", VIETNAMESE_TEXTS, tokenizer_files=False)
    folder, _ = tower_dirs["dinov3-resized"]
    with pytest.raises(ValueError, match=r"cannot load the text tower .*no-tokenizer.*no usable tokenizer"):
        ViCLIPOTModel.from_towers("vit_base_patch16_dinov3.lvd1689m", no_tokenizer)  # fails before any tower
    with pytest.raises(ValueError, match=r"cannot load the image tower 'vit_base_patch16_dinov3.lvd1689m'"):
        ViCLIPOTModel.from_towers("vit_base_patch16_dinov3.lvd1689m", sbert_dir)  # offline, not cached
    with pytest.raises(ValueError, match=r"cannot load the image tower .*model.safetensors.: KeyError"):
        ViCLIPOTModel.from_towers(folder / "model.safetensors", sbert_dir, vision_model_name="convnext_atto")


# ---------------------------------------------------------------- a loaded model re-saved


@pytest.mark.slow
def test_resaved_model_is_complete_in_a_fresh_process(tower_dirs, sbert_dir, tmp_path):
    folder, _ = tower_dirs["dinov3-resized"]
    ViCLIPOTModel.from_towers(folder, sbert_dir, crop_size=32, projection_dim=16).save_pretrained(tmp_path / "a")
    script = f"""
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoProcessor
a, b = {str(tmp_path / "a")!r}, {str(tmp_path / "b")!r}
AutoModel.from_pretrained(a, trust_remote_code=True).save_pretrained(b)
model = AutoModel.from_pretrained(b, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(b, trust_remote_code=True)
st = SentenceTransformer(b, trust_remote_code=True, device="cpu")
texts, image = {CAPTIONS!r}, Image.new("RGB", (40, 30), (200, 30, 60))
with torch.no_grad():
    out = model(**processor(text=texts, images=[image]))
torch.testing.assert_close(torch.from_numpy(st.encode(texts)), out.text_embeds, atol=1e-6, rtol=0)
torch.testing.assert_close(torch.from_numpy(st.encode([image])), out.image_embeds, atol=1e-6, rtol=0)
torch.testing.assert_close(model.encode_text(texts), out.text_embeds, atol=1e-6, rtol=0)
print("OK")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    assert {"processor_config.json", "vocab.txt", "bpe.codes", "modules.json"} <= set(os.listdir(tmp_path / "b"))


def test_saving_without_a_processor_is_a_clear_error(tower_dirs, sbert_dir, tmp_path):
    model = ViCLIPOTModel.from_towers(tower_dirs["convnext-official"][0], sbert_dir, projection_dim=16)
    model.processor = None
    with pytest.raises(ValueError, match="no processor"):
        model.save_pretrained(tmp_path)
