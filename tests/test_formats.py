"""Every real model format this project reads, on offline replicas (tests/replicas.py): the towers `from_towers`
takes, re-saving a loaded model, and the authors' released models and checkpoints."""

import copy
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import VIETNAMESE_TEXTS
from replicas import authors_checkpoint, authors_release, timm_hub_folder, vietnamese_sbert
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoProcessor, AutoTokenizer

from modeling_viclip_ot import ViCLIPOTModel
from viclip_ot.cli import run
from viclip_ot.convert import AuthorsFormatError, load_authors_model
from viclip_ot.convert import main as convert_main

CAPTIONS = VIETNAMESE_TEXTS[:4]
DINOV3_SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}
TOWERS = {  # folder name: (architecture, model_args of the export)
    "dinov3-resized": ("vit_small_patch16_dinov3", DINOV3_SMALL),
    "convnext-official": ("test_convnext", None),
    "convnext-resized": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}),
}


@pytest.fixture(scope="module")
def sbert_dir(tmp_path_factory):
    return vietnamese_sbert(tmp_path_factory.mktemp("vietnamese-sbert"), VIETNAMESE_TEXTS * 3)


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm")
    return {name: timm_hub_folder(root / name, arch, args) for name, (arch, args) in TOWERS.items()}


def images(size=32, count=3, seed=0):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 4 - 2


def sbert_reference(sbert_dir, texts):
    """The sentence-transformers model's own normalised embeddings."""
    return torch.from_numpy(SentenceTransformer(str(sbert_dir), device="cpu").encode(texts, normalize_embeddings=True))


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


# ---------------------------------------------------------------- the authors' releases and checkpoints


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


# ---------------------------------------------------------------- training options on any tower


@pytest.mark.parametrize(
    "architecture, kwargs, blocks, frozen",
    [
        ("vit_small_patch16_dinov3", DINOV3_SMALL, 1, ("cls_token", "reg_token", "patch_embed.", "blocks.0.")),
        (
            "convnext_atto",
            {"depths": (1, 2, 1, 1), "dims": (8, 16, 24, 32)},
            2,
            ("stem.", "stages.0.", "stages.1.downsample.", "stages.1.blocks.0."),
        ),
    ],
)
def test_freeze_image_blocks_on_any_timm_tower(architecture, kwargs, blocks, frozen, sbert_dir, tmp_path):
    from viclip_ot.trainer import freeze

    folder, _ = timm_hub_folder(tmp_path / "tower", architecture, kwargs)
    model = ViCLIPOTModel.from_towers(folder, sbert_dir, crop_size=32, projection_dim=16)
    freeze(model, image_blocks=blocks)
    for name, parameter in model.vision_model.named_parameters():
        assert parameter.requires_grad == (not name.startswith(frozen)), name
    assert all(p.requires_grad for p in model.text_model.parameters())
    inputs = model.processor(text=CAPTIONS[:2])
    model(**inputs, pixel_values=images(count=2), return_loss=True).loss.backward()
    assert all((p.grad is None) != p.requires_grad for p in model.vision_model.parameters())


def test_data_dir_can_be_unset_from_the_command_line():
    from viclip_ot.arguments import parse_arguments

    flags = ["--dataset", "demo", "--data_dir", "", "--bf16", "false"]
    _, data, _, _ = parse_arguments(["configs/viclip_ot.yaml", *flags])
    assert data.dataset == "demo" and data.data_dir is None
    _, data, _, _ = parse_arguments(["configs/viclip_ot.yaml", "--bf16", "false"])
    assert data.data_dir == "data/uit-openviic"


def test_model_card_names_hub_ids_rounds_values_and_titles_the_model(tower_dirs, sbert_dir, tmp_path):
    from huggingface_hub import ModelCard

    from viclip_ot.model_card import write_model_card

    model = ViCLIPOTModel.from_towers(tower_dirs["convnext-official"][0], sbert_dir, projection_dim=16)
    towers = [
        "vit_base_patch16_dinov3.lvd1689m",
        "keepitreal/vietnamese-sbert",
        "hf-hub:timm/convnext_base.dinov3_lvd1689m",
        "convnext_atto",
        str(sbert_dir),
    ]
    write_model_card(
        tmp_path,
        model.config,
        model_name="viclip-ot-uit",
        results={"t2i_R@1": 28.599999999999998},
        dataset_name="uit-openviic",
        base_models=towers,
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == [
        "timm/vit_base_patch16_dinov3.lvd1689m",
        "keepitreal/vietnamese-sbert",
        "timm/convnext_base.dinov3_lvd1689m",
        "timm/convnext_atto.d2_in1k",
    ]
    assert card.data.eval_results[0].metric_value == 28.6 and "28.599999" not in card.content
    assert "\n# viclip-ot-uit\n" in card.content


# ---------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def baseline_dirs(tmp_path_factory):
    from replicas import clip_baseline, siglip_baseline

    root = tmp_path_factory.mktemp("baselines")
    return {"siglip": siglip_baseline(root / "siglip", VIETNAMESE_TEXTS * 5), "clip": clip_baseline(root / "clip")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_baselines_encode_as_their_models_and_run_in_eval(kind, baseline_dirs, tmp_path):
    from transformers import AutoModel as Auto

    from viclip_ot.encoders import load_encoder

    folder = baseline_dirs[kind]
    encoder = load_encoder(folder)
    model, processor = Auto.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    assert type(processor.tokenizer).__name__ == {"siglip": "SiglipTokenizer", "clip": "CLIPTokenizer"}[kind]
    padding = "max_length" if kind == "siglip" else True  # SigLIP was trained on texts padded to full length
    limit = model.config.text_config.max_position_embeddings
    texts = VIETNAMESE_TEXTS[:3]
    with torch.no_grad():
        inputs = processor.tokenizer(texts, padding=padding, truncation=True, max_length=limit, return_tensors="pt")
        expected = F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)
    torch.testing.assert_close(encoder.encode_text(texts), expected, atol=1e-6, rtol=0)

    result = subprocess.run(
        [
            sys.executable,
            "eval.py",
            "--model",
            str(folder),
            "--dataset",
            "demo",
            "--option",
            "train_size=0",
            "--option",
            "validation_size=0",
            "--option",
            "test_size=4",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "results.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (entry,) = json.loads((tmp_path / "results.json").read_text())["evaluations"].values()
    assert entry["images"] == 4 and 0 <= entry["metrics"]["t2i_R@1"] <= 100


@pytest.mark.slow
def test_a_baseline_missing_a_package_is_one_clear_line(baseline_dirs, tmp_path):
    script = (
        "import runpy, sys; sys.modules['sentencepiece'] = None; sys.argv = sys.argv[1:]\n"
        "runpy.run_path('eval.py', run_name='__main__')\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "eval.py",
            "--model",
            str(baseline_dirs["siglip"]),
            "--dataset",
            "demo",
            "--option",
            "test_size=2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--output",
            str(tmp_path / "out.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"eval.py: error: cannot load {baseline_dirs['siglip']}: a package it needs is missing")
    assert "SentencePiece" in line


# ---------------------------------------------------------------- the teacher script


@pytest.mark.slow
def test_teacher_script_on_one_and_two_processes_with_a_text_only_teacher(sbert_dir, tmp_path):
    """`python -m dataset_scripts.teacher_embeddings` with the vietnamese-sbert replica (text only: an image is the
    normalised mean of its captions); two processes split the images and give the same file."""
    from dataset_scripts import load_corpus
    from dataset_scripts.teacher_embeddings import TeacherEmbeddings

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }
    corpus = [
        "--corpus",
        "demo",
        "--split",
        "train",
        "--teacher",
        str(sbert_dir),
        "--batch-size",
        "3",
        "--option",
        "train_size=7",
        "--option",
        "validation_size=1",
        "--option",
        "test_size=1",
        "--option",
        "image_size=16",
    ]
    launches = {
        "one": [sys.executable, "-m", "dataset_scripts.teacher_embeddings"],
        "two": [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--main_process_port",
            "29533",
            "-m",
            "dataset_scripts.teacher_embeddings",
        ],
    }
    files = {}
    for name, launch in launches.items():
        files[name] = tmp_path / f"{name}.safetensors"
        result = subprocess.run(
            [*launch, *corpus, "--output", str(files[name])],
            cwd=root,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    dataset = load_corpus(
        "demo",
        split="train",
        cache_dir=str(tmp_path / "cache"),
        train_size=7,
        validation_size=1,
        test_size=1,
        image_size=16,
    )
    captions = list(dataset["captions"])
    reference = SentenceTransformer(str(sbert_dir), device="cpu")
    expected_texts = torch.from_numpy(reference.encode([c for cs in captions for c in cs], normalize_embeddings=True))
    expected_images = F.normalize(
        torch.stack([rows.mean(0) for rows in expected_texts.split([len(cs) for cs in captions])]), dim=-1
    )
    for name, path in files.items():
        embeddings = TeacherEmbeddings.load(path)
        embeddings.check_corpus(dataset)
        images, texts = embeddings.lookup(list(dataset["image_id"]))
        torch.testing.assert_close(texts, expected_texts, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(images, expected_images, atol=1e-5, rtol=0, msg=name)


# ---------------------------------------------------------------- train.py with the paper's config on the replicas


def test_paper_config_trains_on_the_replicas_with_the_demo_corpus(tower_dirs, sbert_dir, tmp_path, monkeypatch):
    """`train.py configs/viclip_ot.yaml --dataset demo --data_dir ''` with the replica towers as Hub towers."""
    from train import main

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "run"
    main(
        [
            "configs/viclip_ot.yaml",
            "--dataset",
            "demo",
            "--data_dir",
            "",
            "--loss_type",
            "clip",
            "--vision_tower",
            str(tower_dirs["dinov3-resized"][0]),
            "--text_tower",
            str(sbert_dir),
            "--corpus_options",
            json.dumps({"train_size": 8, "validation_size": 4, "test_size": 0, "image_size": 32}),
            "--image_size",
            "32",
            "--projection_dim",
            "16",
            "--output_dir",
            str(output),
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "4",
            "--gradcache_chunk_size",
            "2",
            "--per_device_eval_batch_size",
            "4",
            "--dataloader_num_workers",
            "0",
            "--report_to",
            "none",
            "--freeze_image_blocks",
            "1",
        ]
    )
    model = AutoModel.from_pretrained(output / "final", trust_remote_code=True).eval()
    assert model.config.vision_model_kwargs["embed_dim"] == 32  # the export's model_args
    assert model.encode_text(CAPTIONS).shape == (4, 16)
    card = (output / "final" / "README.md").read_text()
    assert "\n# run\n" in card and str(sbert_dir) not in card.split("---")[1]  # local towers are no base_model


def test_sentence_transformers_teacher_reads_captions_in_nfc(sbert_dir):
    """A sentence-transformers teacher embeds NFD captions as their NFC form, and keeps the tone marks where they
    were typed ("hòa" and "hoà" stay apart: that placement rule belongs to a ViCLIP-OT text tower)."""
    import unicodedata

    from PIL import Image

    from dataset_scripts.teacher_embeddings import compute_teacher_embeddings, load_teacher

    typed = ["hòa bình trên đường phố Hà Nội", "thuỷ triều và bầu trời xanh"]
    decomposed = [unicodedata.normalize("NFD", text) for text in typed]
    assert decomposed != typed
    dataset = datasets_from([Image.new("RGB", (8, 8))], [decomposed + typed])
    rows = compute_teacher_embeddings(dataset, load_teacher(sbert_dir), batch_size=4)
    expected = sbert_reference(sbert_dir, typed)
    torch.testing.assert_close(rows.text_embeds, torch.cat([expected, expected]), atol=1e-6, rtol=0)
    assert not torch.allclose(sbert_reference(sbert_dir, decomposed), expected, atol=1e-3)  # the model alone differs
    moved = sbert_reference(sbert_dir, ["hoà bình trên đường phố Hà Nội", "thủy triều và bầu trời xanh"])
    assert (F.cosine_similarity(moved, expected) < 0.9999).all()  # the placements are told apart, as typed


def test_qwen3_vl_embedding_teacher_through_sentence_transformers(tmp_path):
    """The Qwen3-VL-Embedding replica in its sentence-transformers layout gives the rows of the paper's recipe,
    computed here by hand: the chat (system: the instruction; user: the image or text; generation prompt), left
    padded, the last token's hidden state, L2-normalised."""
    from PIL import Image
    from replicas import qwen3_vl_embedding
    from transformers import AutoModel as Auto

    from dataset_scripts.teacher_embeddings import QWEN3_VL_INSTRUCTION, compute_teacher_embeddings, load_teacher

    folder = qwen3_vl_embedding(tmp_path / "Qwen3-VL-Embedding-2B")
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (24, 36), (10, 90, 200))]
    dataset = datasets_from(images, [CAPTIONS[:2], CAPTIONS[2:3]])
    rows = compute_teacher_embeddings(dataset, load_teacher(folder), batch_size=2)

    model, processor = Auto.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    system = {"role": "system", "content": [{"type": "text", "text": QWEN3_VL_INSTRUCTION}]}

    def by_hand(contents):
        chats = [[system, {"role": "user", "content": [content]}] for content in contents]
        inputs = processor.apply_chat_template(
            chats, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt", padding=True
        )
        with torch.no_grad():
            return F.normalize(model(**inputs).last_hidden_state[:, -1], dim=-1)

    expected_images = by_hand([{"type": "image", "image": image} for image in images])
    expected_texts = by_hand([{"type": "text", "text": text} for text in CAPTIONS[:3]])
    torch.testing.assert_close(rows.image_embeds, expected_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(rows.text_embeds, expected_texts, atol=1e-5, rtol=0)


def datasets_from(images, captions):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "captions": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "image_id": [str(i) for i in range(len(images))], "captions": captions}, features=features
    )
