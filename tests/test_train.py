"""Training: gradient caching, DDP, resuming, Hub folders, teacher files, diagnostics, freezing towers, the paper's
config on the Hub tower replicas, the model card and the command-line options."""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import torch.nn.functional as F
from conftest import CAPTIONS, two_process_launch
from huggingface_hub import ModelCard
from replicas import DINOV3_SMALL, images, timm_hub_folder
from training_setup import batch_loss, demo_split, gradients, make_trainer, random_teacher, small_model
from transformers import AutoModel

from dataset_scripts.teacher_embeddings import TeacherEmbeddings, TeacherMismatchError
from modeling_viclip_ot import ViCLIPOTModel, multi_positive_clip_loss
from viclip_ot.losses import ContrastiveOTLoss, LossSettings, sigrot_divergence, similarity_graph, transport_plan

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    train = demo_split(folder / "cache", "train", images=8)
    return folder, train, random_teacher(train)


def _plain_gradients(model, trainer, batch, chunk_size):
    """Reference: one ordinary autograd graph over the same chunked forward passes (same random draws)."""
    from viclip_ot.data import gradcache_chunks

    chunks, caption_order = gradcache_chunks(batch, chunk_size)
    outputs = [model(**chunk) for chunk in chunks]
    images = torch.cat([o.image_embeds for o in outputs])
    texts = torch.cat([o.text_embeds for o in outputs])[caption_order.argsort()]
    batch_loss(trainer, images, texts, batch, model.logit_scale.exp(), model.logit_bias).backward()
    return gradients(model)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradient_cache_equals_full_batch_backward(corpus, tmp_path, dropout):
    _, train, teacher = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs], dropout=dropout)
    trainer, collator = make_trainer(model, tmp_path / "out", teacher=teacher, gradcache_chunk_size=3)
    batch = collator([train[i] for i in range(8)])
    model.train()

    model.zero_grad()
    torch.manual_seed(123)
    reference = _plain_gradients(model, trainer, batch, chunk_size=3)
    model.zero_grad()
    torch.manual_seed(123)
    trainer.training_step(model, batch)
    cached = gradients(model)

    assert reference.keys() == cached.keys() and "logit_scale" in cached
    for name in reference:
        torch.testing.assert_close(cached[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)
    if dropout:  # the replay matters: a different random state gives other gradients
        model.zero_grad()
        torch.manual_seed(7)
        other = _plain_gradients(model, trainer, batch, chunk_size=3)
        assert any(not torch.allclose(other[n], reference[n], atol=1e-5) for n in reference)


def test_cached_step_is_the_base_step_of_transformers(corpus, tmp_path):
    """Gradient caching replaces only the loss: transformers' `training_step` still puts a schedule-free optimizer in
    train mode and divides the loss, and so every gradient, by the gradient-accumulation steps."""

    class ScheduleFree(torch.optim.SGD):  # the `train()` / `eval()` modes of schedule-free optimizers
        training = False

        def train(self):
            self.training = True

        def eval(self):
            self.training = False

    _, train, teacher = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs])
    trainer, collator = make_trainer(model, tmp_path / "out", teacher=teacher, gradcache_chunk_size=3)
    trainer.optimizer = ScheduleFree(model.parameters(), lr=0.1)
    trainer.optimizer.eval()
    trainer.current_gradient_accumulation_steps = 4
    batch = collator([train[i] for i in range(8)])
    model.train()

    model.zero_grad()
    outputs = model(
        pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    loss = trainer.loss_fn(
        outputs.image_embeds,
        outputs.text_embeds,
        batch["caption_image_index"],
        model.logit_scale.exp(),
        teacher_image_embeds=batch["teacher_image_embeds"],
        teacher_text_embeds=batch["teacher_text_embeds"],
    ).loss
    loss.backward()
    reference = gradients(model)
    model.zero_grad()
    step_loss = trainer.training_step(model, batch)

    assert trainer.optimizer.training
    torch.testing.assert_close(step_loss, loss.detach() / 4, atol=1e-6, rtol=1e-5)
    cached = gradients(model)
    assert reference.keys() == cached.keys() and "logit_scale" in cached
    for name in reference:
        torch.testing.assert_close(cached[name], reference[name] / 4, atol=1e-6, rtol=1e-4, msg=name)


def test_plain_step_gradients_equal_the_hybrid_loss_computed_directly(corpus, tmp_path):
    """`training_step` (no gradient cache) back-propagates L_SIGROT + 0.1 L_CLIP of the model's own embeddings: the
    gradients of every parameter equal those of the loss assembled here from the towers' features, the teacher graph,
    the plan and the loss functions (each tested against numpy in test_losses.py)."""
    _, train, teacher = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs])
    trainer, collator = make_trainer(model, tmp_path / "out", teacher=teacher)
    batch = collator([train[i] for i in range(8)])
    model.train()
    model.zero_grad()
    index = batch["caption_image_index"]
    images = F.normalize(model.get_image_features(batch["pixel_values"]).pooler_output, dim=-1)
    texts = F.normalize(model.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output, dim=-1)
    scale = model.logit_scale.exp()
    graph = similarity_graph(batch["teacher_image_embeds"], batch["teacher_text_embeds"], index)
    sigrot = sigrot_divergence(transport_plan(images, texts, index, 0.05, 0.5), graph, scale)
    loss = sigrot + 0.1 * multi_positive_clip_loss(images, texts, index, scale)
    loss.backward()
    reference = gradients(model)
    model.zero_grad()
    step_loss = trainer.training_step(model, batch)
    torch.testing.assert_close(step_loss, loss.detach(), atol=1e-6, rtol=1e-5)
    assert reference.keys() == gradients(model).keys() and "logit_scale" in reference
    for name, grad in gradients(model).items():
        torch.testing.assert_close(grad, reference[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_union(corpus, tmp_path):
    folder, train, teacher = corpus
    captions = [c for cs in train["captions"] for c in cs]
    small_model(tmp_path, captions)  # writes the shared text tower
    teacher.save(tmp_path / "teacher.safetensors")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    command = [
        *two_process_launch(29517),
        str(REPO / "tests" / "ddp_worker.py"),
        str(tmp_path),
        str(folder / "cache"),
    ]
    result = subprocess.run(command, env=env, check=False, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    distributed = torch.load(tmp_path / "ddp_gradients.pt")

    model = small_model(tmp_path, captions)
    trainer, collator = make_trainer(model, tmp_path / "single", teacher=teacher)
    union = collator([train[i] for i in range(8)])
    model.train()
    for mode, chunk_size in (("plain", None), ("cached", 2)):
        trainer.args.gradcache_chunk_size = chunk_size
        model.zero_grad()
        loss = trainer.training_step(model, union)
        assert float(distributed[mode]["loss"]) == pytest.approx(float(loss), abs=1e-5)
        for name, grad in gradients(model).items():
            torch.testing.assert_close(
                distributed[mode]["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=f"{mode} {name}"
            )


def _train(tmp_path, output, cache, teacher_file, *extra):
    from train import main

    main(
        [
            str(REPO / "configs" / "demo.yaml"),
            "--output_dir",
            str(output),
            "--teacher_embeddings",
            str(teacher_file),
            "--corpus_options",
            json.dumps({"train_size": 16, "validation_size": 8, "test_size": 0, "image_size": 32}),
            "--test_split",
            "",
            "--image_size",
            "32",
            "--vision_model_kwargs",
            '{"embed_dim": 32, "depth": 1, "num_heads": 2}',
            "--projection_dim",
            "16",
            "--per_device_train_batch_size",
            "4",
            "--gradcache_chunk_size",
            "2",
            "--num_train_epochs",
            "1",
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--logging_steps",
            "1",
            "--save_total_limit",
            "5",
            "--load_best_model_at_end",
            "false",
            "--dataloader_num_workers",
            "0",
            *extra,
        ]
    )


@pytest.fixture
def demo_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    train = demo_split(tmp_path / "datasets_cache", "train", images=16)
    teacher = random_teacher(train)
    teacher.save(tmp_path / "teacher.safetensors")
    return tmp_path / "teacher.safetensors"


class Crash(Exception):
    pass


def test_resume_from_checkpoint_gives_the_same_weights(tmp_path, demo_teacher, monkeypatch):
    from safetensors.torch import load_file

    from viclip_ot.trainer import ViCLIPOTTrainer

    _train(tmp_path, tmp_path / "straight", None, demo_teacher)
    step = ViCLIPOTTrainer.training_step

    def crash_after_two_steps(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise Crash
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(ViCLIPOTTrainer, "training_step", crash_after_two_steps)
        _train(tmp_path, tmp_path / "interrupted", None, demo_teacher)
    _train(
        tmp_path,
        tmp_path / "interrupted",
        None,
        demo_teacher,
        "--resume_from_checkpoint",
        str(tmp_path / "interrupted" / "checkpoint-2"),
    )
    straight = load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors")
    resumed = load_file(tmp_path / "interrupted" / "checkpoint-4" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0, msg=key)


@pytest.mark.slow
def test_pushed_folder_loads_offline_with_a_model_card(tmp_path, demo_teacher, monkeypatch):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=(), **kwargs):
        target = tmp_path / "hub" / f"upload{len(uploads)}"
        shutil.copytree(folder_path, target, ignore=shutil.ignore_patterns(*ignore_patterns))
        uploads.append(target)
        future = concurrent.futures.Future()
        future.set_result(None)
        return future

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    _train(
        tmp_path,
        tmp_path / "run",
        None,
        demo_teacher,
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "someone/viclip-ot-demo",
    )
    assert len(uploads) >= 2  # each checkpoint, then the end of training

    script = (
        "import sys, torch; from transformers import AutoModel\n"
        "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print(m.encode_text(['hai hình tròn màu đỏ']).shape)\n"
    )
    for folder in (uploads[0], uploads[-1]):
        result = subprocess.run(
            [sys.executable, "-c", script, str(folder)],
            cwd=tmp_path,
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        )
        assert result.returncode == 0 and "torch.Size([1, 16])" in result.stdout, result.stderr[-3000:]
        card = ModelCard.load(folder / "README.md")
        assert card.data.language == ["vi"] and card.data.library_name == "transformers"
        assert "loss_type: clip_sigrot" in card.text
    final_card = ModelCard.load(uploads[-1] / "README.md")
    assert final_card.data.eval_results and final_card.data.eval_results[0].metric_name == "t2i_R@1"


def test_teacher_files_that_do_not_match_fail_before_training(tmp_path, demo_teacher):
    teacher = TeacherEmbeddings.load(demo_teacher)
    other_ids = TeacherEmbeddings(
        teacher.image_embeds,
        teacher.text_embeds,
        [f"x{i}" for i in teacher.image_ids],
        teacher.caption_counts,
        teacher.metadata,
    )
    other_ids.save(tmp_path / "ids.safetensors")
    with pytest.raises(TeacherMismatchError, match=r"ids.safetensors.*16 corpus images have no teacher row"):
        _train(tmp_path, tmp_path / "a", None, tmp_path / "ids.safetensors")

    counts = teacher.caption_counts.clone()
    counts[0] -= 1
    counts[1] += 1
    TeacherEmbeddings(teacher.image_embeds, teacher.text_embeds, teacher.image_ids, counts, teacher.metadata).save(
        tmp_path / "counts.safetensors"
    )
    with pytest.raises(TeacherMismatchError, match="2 images have a different caption count"):
        _train(tmp_path, tmp_path / "b", None, tmp_path / "counts.safetensors")

    with pytest.raises(TeacherMismatchError, match="image dimension 24 != text dimension 8"):
        TeacherEmbeddings(
            teacher.image_embeds, teacher.text_embeds[:, :8], teacher.image_ids, teacher.caption_counts, {}
        )
    assert not (tmp_path / "a" / "final").exists() and not (tmp_path / "b" / "final").exists()


def test_optimizer_groups_learning_rates_and_weight_decay(corpus, tmp_path):
    _, train, _ = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs])
    trainer, _ = make_trainer(model, tmp_path / "out", learning_rate=1e-4, head_learning_rate=5e-3, weight_decay=0.1)
    optimizer = trainer.create_optimizer()
    settings = {
        id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]
    }
    named = dict(model.named_parameters())
    assert settings[id(named["vision_head.proj.weight"])] == (5e-3, 0.1)
    assert settings[id(named["logit_scale"])] == (5e-3, 0.0)
    assert settings[id(named["vision_model.blocks.0.attn.qkv.weight"])] == (1e-4, 0.1)
    assert settings[id(named["vision_model.cls_token"])] == (1e-4, 0.0)
    assert settings[id(named["text_model.encoder.layer.0.output.LayerNorm.weight"])] == (1e-4, 0.0)
    assert settings[id(named["text_model.embeddings.word_embeddings.weight"])] == (1e-4, 0.1)
    assert len(settings) == sum(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------
# Diagnostics, gradient caching without the scale
# --------------------------------------------------------------------------------------------------------------


def test_gradient_cache_when_the_loss_uses_neither_scale_nor_bias(corpus, tmp_path):
    """SIGROT alone with a fixed prior temperature uses no scale: gradient caching gives the full-batch gradients
    (the scale gets none) instead of failing on a leaf without gradient."""
    _, train, teacher = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs])
    trainer, collator = make_trainer(model, tmp_path / "out", teacher=teacher, gradcache_chunk_size=3)
    trainer.loss_fn = ContrastiveOTLoss(LossSettings("sigrot", prior_temperature=0.05))
    batch = collator([train[i] for i in range(8)])
    model.train()
    model.zero_grad()
    reference = _plain_gradients(model, trainer, batch, chunk_size=3)
    model.zero_grad()
    trainer.training_step(model, batch)
    cached = gradients(model)
    assert reference.keys() == cached.keys() and "logit_scale" not in cached
    for name in reference:
        torch.testing.assert_close(cached[name], reference[name], atol=1e-5, rtol=1e-4, msg=name)


def test_logs_carry_the_diagnostics_and_warn_of_collapse(corpus, tmp_path, caplog):
    """The log of an interval holds the mean of every batch's diagnostics (checked against the loss called on the
    same embeddings); a collapsed interval after the first epoch, or an unconverged Sinkhorn, is a warning."""
    from viclip_ot.trainer import collapse_signs

    _, train, teacher = corpus
    model = small_model(tmp_path, [c for cs in train["captions"] for c in cs])
    trainer, collator = make_trainer(model, tmp_path / "out", teacher=teacher)
    batches = [collator([train[i] for i in range(start, start + 4)]) for start in (0, 4)]
    expected = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            outputs = model(
                pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
            expected.append(
                trainer.loss_fn(
                    outputs.image_embeds,
                    outputs.text_embeds,
                    batch["caption_image_index"],
                    model.logit_scale.exp(),
                    None,
                    batch["teacher_image_embeds"],
                    batch["teacher_text_embeds"],
                ).diagnostics
            )
            trainer.compute_loss(model, batch)
    logs = {"loss": 1.0}
    trainer.state.epoch = 0.5
    trainer.log(logs)
    for name in ("plan_row_mass", "matched_cosine", "unmatched_cosine", "sinkhorn_unconverged"):
        assert logs[name] == pytest.approx(float(expected[0][name] + expected[1][name]) / 2, rel=1e-5, abs=1e-7)
    assert logs["scale"] == pytest.approx(float(model.logit_scale.detach().exp()))

    trainer.loss_fn.ot_options["max_iter"] = 2
    trainer.compute_loss(model, batches[0])
    trainer.state.epoch = 2.0
    with caplog.at_level("WARNING"):
        trainer.log({"loss": 1.0})
    assert "Sinkhorn stopped at ot_max_iter=2 unconverged in 100% of the batches" in caplog.text
    assert ("collapsed" in caplog.text) == bool(collapse_signs(logs))  # random towers: matched ~ unmatched

    assert collapse_signs({"matched_cosine": 0.9, "unmatched_cosine": 0.1, "plan_row_mass": 0.8}) == []
    signs = collapse_signs({"matched_cosine": -0.4, "unmatched_cosine": -0.42, "plan_row_mass": 0.2})
    assert len(signs) == 2 and "anti-aligned" in signs[0] and "mass 0.20" in signs[1]
    assert "similar" in collapse_signs({"matched_cosine": 0.7, "unmatched_cosine": 0.68, "plan_row_mass": 0.9})[0]
    assert collapse_signs({"matched_cosine": 0.02, "unmatched_cosine": 0.0, "plan_row_mass": 0.39}) == []  # untrained


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


# ---------------------------------------------------------------- the paper's config on the replicas, the model card


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


# ---------------------------------------------------------------- command-line options


def test_options_from_yaml_and_flags(tmp_path):
    """Dict options come as YAML mappings or JSON flags; model options are the config's fields with its defaults;
    unknown options are one clear error."""
    from configuration_viclip_ot import ViCLIPOTConfig
    from viclip_ot.arguments import parse_arguments

    config = tmp_path / "run.yaml"
    config.write_text(
        "base: " + str(REPO / "configs" / "siglip.yaml") + "\ncorpus_options: {language: vi}\n"
        "vision_model_kwargs: {depth: 2}\nbf16: false\n"
    )
    model, data, _, _ = parse_arguments([str(config), "--small_text_tower_kwargs", '{"hidden_size": 32}'])
    assert data.corpus_options == {"language": "vi"} and model.small_text_tower_kwargs == {"hidden_size": 32}
    config_kwargs = model.config_kwargs()
    assert config_kwargs["vision_model_kwargs"] == {"depth": 2} and config_kwargs["logit_bias_init_value"] == -10.0
    built, defaults = ViCLIPOTConfig(**config_kwargs).to_dict(), ViCLIPOTConfig().to_dict()
    changed = {name for name in defaults if built[name] != defaults[name]}
    assert changed == {"vision_model_kwargs", "logit_scale_init_value", "logit_bias_init_value"}
    assert ViCLIPOTConfig(**parse_arguments([])[0].config_kwargs()).to_dict() == defaults
    model, data, _, _ = parse_arguments([str(config), "--corpus_options", '{"language": "en"}'])
    assert data.corpus_options == {"language": "en"} and parse_arguments([])[0].vision_model_kwargs == {}

    config.write_text("no_such_option: 1\n")
    with pytest.raises(ValueError, match=r"unknown options \['no_such_option'\]"):
        parse_arguments([str(config)])
    with pytest.raises(ValueError, match="--corpus_options: not a JSON object"):
        parse_arguments(["--corpus_options", "{language: vi"])


def test_data_dir_can_be_unset_from_the_command_line():
    from viclip_ot.arguments import parse_arguments

    flags = ["--dataset", "demo", "--data_dir", "", "--bf16", "false"]
    _, data, _, _ = parse_arguments(["configs/viclip_ot.yaml", *flags])
    assert data.dataset == "demo" and data.data_dir is None
    _, data, _, _ = parse_arguments(["configs/viclip_ot.yaml", "--bf16", "false"])
    assert data.data_dir == "data/uit-openviic"
