"""The studies' runs: each (row, teacher, seed) trained once, resumably (one JSON result file per finished run,
written atomically), in this process or a fresh worker process per run, with the fingerprints that check pairing."""

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from transformers import TrainerCallback

from viclip_ot.files import write_text

from .design import PAPER_LOSS, ROWS
from .teachers import teacher_files


def run_path(runs_folder, row, teacher, seed):
    """The result file of a run."""
    slug = "".join(c if c.isalnum() else "-" for c in f"{row}--{teacher or 'none'}").lower()
    return Path(runs_folder) / f"{slug}--seed{seed}.json"


def collect(runs_folder):
    """{(row, teacher): [result record of each seed]} of the finished runs."""
    groups = {}
    for path in sorted(Path(runs_folder).glob("*.json")):
        record = json.loads(path.read_text())
        groups.setdefault((record["row"], record["teacher"]), []).append(record)
    return groups


def write_json(path, value):
    """Write atomically: a finished run is either complete on disk or absent."""
    write_text(path, json.dumps(value, indent=2))


class PairingFingerprint(TrainerCallback):
    """What pairing by seed keeps equal across rows, as short hashes: the initial weights (all but the logit scale
    and bias, which SigLIP initialises differently) and the training batches in order (pixels and token ids of every
    training forward)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        weights = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            if not name.startswith(("logit_scale", "logit_bias")):
                weights.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        self.initial_weights = weights.hexdigest()[:16]
        self._batches = hashlib.sha256()
        self._hook = model.register_forward_pre_hook(self._hash_batch, with_kwargs=True)

    def _hash_batch(self, module, args, kwargs):
        if module.training:
            for name in ("pixel_values", "input_ids"):
                self._batches.update(kwargs[name].detach().cpu().numpy().tobytes())

    def on_train_end(self, args, state, control, **kwargs):
        self._hook.remove()
        self.training_batches = self._batches.hexdigest()[:16]
        self.steps = state.global_step


def train_run(train_main, config, options, output_dir):
    """Train `config` with `options` (field -> value, None included) through `train_main` (train.py's `main`),
    from a config file in `output_dir` based on `config`; the test metrics after training and the last training
    diagnostics, one dict, with the run's `PairingFingerprint` under `pairing`."""
    import yaml

    run_config = Path(output_dir) / "run.yaml"
    run_config.write_text(yaml.safe_dump({"base": str(Path(config).resolve()), **options}))
    fingerprint = PairingFingerprint()
    results = train_main([str(run_config), "--output_dir", str(output_dir)], callbacks=[fingerprint])
    after = {key.removeprefix("test_"): value for key, value in results["after training"].items()}
    pairing = {"initial_weights": fingerprint.initial_weights, "training_batches": fingerprint.training_batches}
    return {**after, **results["last training diagnostics"], "steps": fingerprint.steps, "pairing": pairing}


def _run_record(train_main, config, options, work, threads, launcher):
    """Train one run in its own folder under `work` (removed after) with `threads` torch threads; its JSON record
    less row, teacher and seed: metrics, seconds, the threads it used and how it was launched."""
    torch.set_num_threads(threads)
    output_dir = Path(tempfile.mkdtemp(dir=work))
    start = time.perf_counter()
    metrics = train_run(train_main, config, options, output_dir)
    shutil.rmtree(output_dir)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "launcher": f"{launcher}, nice {os.nice(0)}, {os.cpu_count()} CPUs",
        "steps": metrics.pop("steps"),
        "pairing": metrics.pop("pairing"),
        "metrics": metrics,
    }


def run_study(
    train_main,
    expected,
    config,
    common,
    *,
    study,
    runs_folder,
    work,
    shipped_teacher,
    command,
    header=None,
    jobs=1,
    threads=1,
):
    """Train every run of `expected` ((row, teacher, seed)) that has no result file in `runs_folder` yet, with
    `common`, the paper's loss settings and the row's options, from `config` through `train_main`; `jobs` at a
    time, each in a fresh process when more than one. Each result, `header` included, is written as it finishes;
    `command` (how the study was started) goes into its `launcher`. Returns the runs that failed."""
    from tqdm.auto import tqdm

    runs_folder, work = Path(runs_folder), Path(work)
    runs_folder.mkdir(parents=True, exist_ok=True)
    todo = [run for run in expected if not run_path(runs_folder, *run).is_file()]
    teachers = teacher_files(work, sorted({teacher for _, teacher, _ in todo if teacher}), shipped_teacher)
    launcher = f"{command} (train.main in " + ("the same process)" if jobs == 1 else "a fresh worker process per run)")

    def task(row, teacher, seed):
        options = {**common, **PAPER_LOSS, **ROWS[row], "seed": seed}
        if teacher is not None:
            options["teacher_embeddings"] = str(teachers[teacher])
        return train_main, config, options, work, threads, launcher

    def finish(run, record):
        row, teacher, seed = run
        first = {"row": row, "teacher": teacher, "seed": seed, "study": study, "options": ROWS[row], **(header or {})}
        write_json(run_path(runs_folder, *run), {**first, **record})

    failed = []
    if jobs == 1:
        for run in tqdm(todo, desc=f"{study} runs"):
            finish(run, _run_record(*task(*run)))
    elif todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1) as pool:
            futures = {pool.submit(_run_record, *task(*run)): run for run in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{study} runs"):
                if future.exception() is None:
                    finish(futures[future], future.result())
                else:  # the other runs go on; the failed ones are listed at the end (and missing in the report)
                    print(f"run {futures[future]} failed: {future.exception()!r}", file=sys.stderr)
                    failed.append(futures[future])
    return failed
