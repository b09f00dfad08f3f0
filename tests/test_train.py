"""Training: gradient caching, DDP, resuming, Hub folders, teacher files."""

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
from huggingface_hub import ModelCard
from training_setup import demo_split, gradients, make_trainer, random_teacher, small_model, tiny_demo_config

from dataset_scripts.teacher_embeddings import TeacherEmbeddings, TeacherMismatchError
from modeling_viclip_ot import multi_positive_clip_loss
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
    trainer._batch_loss(images, texts, batch, model.logit_scale.exp(), model.logit_bias).backward()
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
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29517",
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
# Diagnostics, gradient caching without the scale, the ablation driver
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


def test_scene_factor_teacher_matches_the_demo_corpus(tmp_path):
    """The perfect teacher's row of an image is the normalised one-hot code of the factors its first caption states
    (template "{count} {shape} {colour} {position}, nền {background}"), its captions carry that row, and the file
    passes train.py's corpus check; the noisy one stays close to it."""
    from dataset_scripts import demo, load_corpus
    from viclip_ot.study.teachers import scene_factor_teacher

    teacher = scene_factor_teacher()
    train = load_corpus("demo", split="train", cache_dir=str(tmp_path / "cache"))
    teacher.check_corpus(train)
    tables = [
        {str(k): v for k, v in demo.COUNTS.items()},
        demo.SHAPES,
        {name: phrases for name, (_, phrases) in demo.COLOURS.items()},
        {name: phrases for name, (_, phrases) in demo.POSITIONS.items()},
    ]
    backgrounds = {phrase: name for name, (_, phrases) in demo.BACKGROUNDS.items() for phrase in phrases}
    for row, captions in enumerate(train["captions"][:40]):
        stated, rest = [], captions[0]
        for table in tables:  # the longest phrase that starts what is left of the caption
            value, phrase = max(
                ((v, p) for v, ps in table.items() for p in ps if rest.startswith(p)), key=lambda pair: len(pair[1])
            )
            stated.append(value)
            rest = rest[len(phrase) :].lstrip()
        stated.append(backgrounds[rest.removeprefix(", nền ")])
        code = torch.zeros(teacher.dimension)
        offsets = [0, 3, 6, 10, 15]
        for offset, table, value in zip(offsets, [*tables, demo.BACKGROUNDS], stated):
            code[offset + list(table).index(value)] = 5**-0.5
        torch.testing.assert_close(teacher.image_embeds[row], code)
        torch.testing.assert_close(teacher.text_embeds[5 * row : 5 * row + 5], code.expand(5, -1))
    noisy = scene_factor_teacher(noise=0.15)
    assert 0.7 < (noisy.image_embeds * teacher.image_embeds).sum(1).mean() < 0.95


@pytest.mark.slow
def test_ablation_driver_resumes_and_reports(tmp_path, monkeypatch):
    """Two quick runs of the demo study (a few steps): one JSON per finished run, a rerun trains nothing, the
    table and figure hold every run with its interval over seeds."""
    import reproduce
    from viclip_ot.study import runs
    from viclip_ot.study.statistics import interval

    trained = []
    original = runs.train_run
    monkeypatch.setattr(runs, "train_run", lambda *a: trained.append(a) or original(*a))
    small = tiny_demo_config(tmp_path / "small.yaml")
    args = [
        "--config",
        str(small),
        "--rows",
        "CLIP",
        "ViCLIP-OT, normalised plan",
        "--teachers",
        "perfect",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--train-images",
        "16",
        "--runs",
        str(tmp_path / "runs"),
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "ablation.md"),
    ]
    reproduce.main(args)
    assert len(trained) == 4 and len(list((tmp_path / "runs").glob("*.json"))) == 4
    reproduce.main(args)
    assert len(trained) == 4
    table = (tmp_path / "ablation.md").read_text()
    records = [json.loads(path.read_text()) for path in (tmp_path / "runs").glob("*normalised*.json")]
    values = [record["metrics"]["avg_R"] for record in records]
    mean, half = interval(values)
    assert f"| ViCLIP-OT, normalised plan | perfect | 2 | {mean:.1f} ± {half:.1f} |" in table
    assert half == pytest.approx(12.706 * abs(values[0] - values[1]) / 2, rel=1e-3)  # t(0.975, 1) s / sqrt(2)
    assert (tmp_path / "ablation.png").stat().st_size > 0


class _Thumbnail(torch.nn.Module):
    """A toy near-duplicate descriptor in SSCD's TorchScript form: the mean-centred 8x8 thumbnail, L2-normalised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thumb = torch.nn.functional.adaptive_avg_pool2d(x, 8)
        return torch.nn.functional.normalize((thumb - thumb.mean(dim=(2, 3), keepdim=True)).flatten(1), dim=1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_reproduce_paper_suite_end_to_end_on_fixture_corpora(tmp_path, monkeypatch):
    """`reproduce.py --suite paper` on the fixture corpora with tiny towers and one step per config: dedupe reports,
    teacher file, the seven configs trained and evaluated on the paper's suite, the table beside the paper's
    numbers; a second call reuses everything."""
    from corpus_fixtures import write_crossmodal, write_ktvic, write_uit

    import reproduce
    import train
    from viclip_ot.small_towers import save_small_text_tower
    from viclip_ot.study.design import PAPER_AVG_R, PAPER_CONFIGS

    root = tmp_path / "data"
    write_uit(root / "uit-openviic", truncate=None)
    write_ktvic(root / "ktvic")
    write_crossmodal(root / "crossmodal3600")
    sscd = tmp_path / "sscd.torchscript.pt"
    torch.jit.script(_Thumbnail()).save(str(sscd))
    teacher = save_small_text_tower(tmp_path / "teacher", ["một con mèo", "hai chiếc xe", "bầu trời xanh"])
    tiny = {
        "small_towers": "true",
        "image_size": "32",
        "projection_dim": "16",
        "vision_model_kwargs": '{"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 8}',
        "small_text_tower_kwargs": '{"hidden_size": 32, "num_heads": 2}',
        "max_steps": "1",
        "per_device_train_batch_size": "2",
        "use_cpu": "true",
        "bf16": "false",
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": "false",
        "report_to": "none",
        "dataloader_num_workers": "0",
        "logging_steps": "1",
    }
    args = [
        "--suite",
        "paper",
        "--data-root",
        str(root),
        "--work-dir",
        str(tmp_path / "work"),
        "--sscd",
        str(sscd),
        "--teacher",
        str(teacher),
        "--output",
        str(tmp_path / "paper.md"),
    ]
    for name, value in tiny.items():
        args += ["--train-option", name, value]
    trained = []
    original = train.main
    monkeypatch.setattr(train, "main", lambda argv: trained.append(argv) or original(argv))
    results = reproduce.main(args)

    assert (root / "dedup" / "ktvic-train.json").is_file() and (root / "dedup" / "ktvic-test.json").is_file()
    assert (tmp_path / "work" / "teachers" / "uit-openviic-train.safetensors").is_file()
    assert [argv[0].rsplit("/", 1)[-1] for argv in trained] == [f"{name}.yaml" for name in PAPER_CONFIGS.values()]
    with_teacher = [argv[0].rsplit("/", 1)[-1] for argv in trained if "--teacher_embeddings" in argv]
    assert with_teacher == ["sigrot.yaml", "viclip_ot.yaml", "visiglip_ot.yaml"]
    table = (tmp_path / "paper.md").read_text()
    assert list(results) == list(PAPER_CONFIGS)
    for row, evaluations in results.items():
        assert list(evaluations) == [
            "UIT-OpenViIC test",
            "KTVIC train (dedup)",
            "KTVIC test (dedup)",
            "Crossmodal-3600 vi",
        ]
        uit = evaluations["UIT-OpenViIC test"]["metrics"]["avg_R"]
        published = PAPER_AVG_R["UIT-OpenViIC test"].get(row)
        assert f"| {row} | {uit:.2f}" + (f" ({published:.2f})" if published else " |") in table
    assert "(67.34)" in table and "(56.17)" in table
    reproduce.main(args)
    assert len(trained) == 7


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
