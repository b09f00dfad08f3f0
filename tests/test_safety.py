"""Safe to share: a model folder's own code and pickles never run, the converter never overwrites its input or an
existing folder unasked, every command line reports a user error as one `error:` line (exit 2), files follow the
umask."""

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from search_fixtures import REPO, save_demo_model, write_demo_images
from transformers.utils import is_torch_bf16_gpu_available

from viclip_ot.arguments import parse_arguments
from viclip_ot.cli import run
from viclip_ot.files import atomic_write
from viclip_ot.loading import load_model
from viclip_ot.search import ImageIndex

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
CODE_FILES = ("configuration_viclip_ot.py", "modeling_viclip_ot.py", "processing_viclip_ot.py")


def command(*arguments, cwd=REPO):
    return subprocess.run(
        [sys.executable, *map(str, arguments)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def search(capsys, *arguments):
    """`python -m viclip_ot.search ARGUMENTS` in this process: `(exit status, stdout, stderr)`."""
    from viclip_ot.search import main

    try:
        main([str(argument) for argument in arguments])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, code, captured.out, captured.err)


def assert_user_error(result, *fragments):
    """Exit status 2, no traceback, and a last stderr line `...: error: ...` holding every fragment."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert ": error: " in last and all(fragment in last for fragment in fragments), last


def snapshot(folder):
    """Every file under `folder` with its bytes."""
    return {path.relative_to(folder): path.read_bytes() for path in sorted(Path(folder).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A model folder whose saved code would write a marker file if it ever ran, and an index it built."""
    folder = tmp_path_factory.mktemp("safety")
    model_dir = save_demo_model(folder, folder / "cache")
    marker = folder / "MARKER"
    for name in CODE_FILES:
        code = (model_dir / name).read_text()
        (model_dir / name).write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text({name!r})\n{code}")
    write_demo_images(folder / "photos", folder / "cache", 6)
    ImageIndex.build(load_model(model_dir), folder / "photos", show_progress_bar=False).save(folder / "index")
    return folder, model_dir, marker


# ---------------------------------------------------------------- no foreign code


def test_a_tampered_model_folder_runs_no_code_when_queried(shared, capsys):
    folder, model_dir, marker = shared
    result = search(capsys, "query", "--index", folder / "index", "--text", "ba tam giác", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"score"' in result.stdout
    from viclip_ot.encoders import load_encoder

    load_encoder(model_dir).encode_text(["ba tam giác"])  # eval.py's loader
    assert not marker.exists()


def test_pickled_weights_are_refused_and_changed_weights_fail_the_fingerprint(shared, tmp_path, capsys):
    folder, model_dir, marker = shared
    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors weights only"):
        load_model(pickled)

    changed = tmp_path / "changed"
    shutil.copytree(model_dir, changed)
    weights = load_file(changed / "model.safetensors")
    weights["logit_scale"] += 1
    from safetensors.torch import save_file

    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    result = search(capsys, "query", "--index", folder / "index", "--text", "x", "--model", changed)
    assert_user_error(result, "built with another model")
    assert not marker.exists()


def test_an_index_whose_model_is_gone_says_to_pass_model(shared, tmp_path, capsys):
    folder, model_dir, _ = shared
    moved = tmp_path / "index"
    shutil.copytree(folder / "index", moved)
    metadata = (moved / "index.json").read_text().replace(str(model_dir.resolve()), str(tmp_path / "gone"))
    (moved / "index.json").write_text(metadata)
    result = search(capsys, "query", "--index", moved, "--text", "ba tam giác")
    assert_user_error(result, "no such model folder", "pass --model")
    result = search(capsys, "query", "--index", moved, "--text", "x", "--model", "outputs/no/such")
    assert_user_error(result, "no such model folder: outputs/no/such")
    assert "Repo id" not in result.stderr


# ---------------------------------------------------------------- the converter


def test_convert_never_writes_into_its_input_or_an_existing_folder(tmp_path):
    from viclip_ot.convert import convert

    release = tmp_path / "release"
    (release / "inside").mkdir(parents=True)
    (release / "config.json").write_text('{"vision_config": {}, "text_config": {}}')
    (release / "model.safetensors").write_bytes(b"weights")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    for output, overwrite, message in [
        (release, True, "inside the source"),
        (release / "inside" / "out", True, "inside the source"),
        (tmp_path, True, "inside the source"),
        (existing, False, "pass --overwrite"),
        (existing / "notes.txt", True, "is no folder"),
    ]:
        with pytest.raises((ValueError, FileExistsError), match=message):
            convert(release, output, overwrite=overwrite)
    assert snapshot(tmp_path) == before


def test_convert_refuses_a_pickle_that_is_no_plain_checkpoint(tmp_path):
    from viclip_ot.convert import convert

    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    checkpoint = tmp_path / "viclip_ot_best.pth"
    checkpoint.write_bytes(pickle.dumps({"model_state_dict": Payload()}, protocol=2))
    with pytest.raises(ValueError, match=f"{checkpoint} is refused"):
        convert(checkpoint, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- command-line errors


@pytest.mark.parametrize(
    "files, arguments, message",
    [
        ({}, ["--no_such_flag", "1"], "--no_such_flag"),
        ({"a.yaml": "learning_rate: [1\n"}, ["a.yaml"], "a.yaml: malformed YAML"),
        ({"a.yaml": "no_such_key: 1\n"}, ["a.yaml"], "a.yaml: unknown options ['no_such_key']"),
        ({"a.yaml": "base: a.yaml\n"}, ["a.yaml"], "a.yaml -> "),
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, ["a.yaml"], "is a cycle"),
        ({"a.yaml": "base: [b.yaml, c.yaml]\n"}, ["a.yaml"], "base: must be one file name"),
        ({"a.yaml": "- 1\n"}, ["a.yaml"], "expected a mapping"),
        ({}, ["missing.yaml"], "config file not found"),
    ],
)
def test_train_user_errors_are_one_line(files, arguments, message, tmp_path, capsys):
    import train

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    arguments = [str(tmp_path / argument) if argument.endswith(".yaml") else argument for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        run(train.main, [*arguments, "--output_dir", str(tmp_path / "out")], "train.py")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train.py: error: ") and "\n" not in error and message in error, error


# Runs each entry point as `python ARGV...` in one interpreter (the imports are shared), printing their
# `[exit status, stderr]` as JSON; an uncaught exception ends it with a traceback.
RUN_ENTRY_POINTS = """
import contextlib, io, json, runpy, sys
results = []
for argv in json.loads(sys.argv[1]):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            if argv[0] == "-m":
                sys.argv = argv[1:]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = argv
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    results.append([code, stderr.getvalue()])
print(json.dumps(results))
"""
ENTRY_POINT_ERRORS = [
    (["train.py", "--no_such_flag", "1"], "train.py: error: ", "--no_such_flag"),
    (["eval.py", "--model", "outputs/no/such", "--dataset", "demo"], "eval.py: error: ", "no such model folder"),
    (["app.py", "--model", "outputs/no/such", "--index", "x"], "app.py: error: ", "no such model folder"),
    (["-m", "viclip_ot.convert", "no-such.pth", "out"], "viclip_ot.convert: error: ", "no-such.pth"),
    (["-m", "viclip_ot.search", "query", "--index", "no-such", "--text", "x"], "search: error: ", "no-such"),
    (
        ["-m", "dataset_scripts.export", "--corpus", "json", "--data-dir", "no-such", "--output-dir", "x"],
        "export: error: ",
        "no-such",
    ),
]


@pytest.mark.slow
def test_every_entry_point_reports_a_user_error_in_one_line():
    argvs = [argv for argv, _, _ in ENTRY_POINT_ERRORS]
    result = command("-c", RUN_ENTRY_POINTS, json.dumps(argvs))
    assert result.returncode == 0, result.stderr[-3000:]
    for (argv, prefix, fragment), (code, stderr) in zip(ENTRY_POINT_ERRORS, json.loads(result.stdout)):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        assert code == 2 and "Traceback" not in stderr, (argv, stderr[-2000:])
        assert prefix in last and fragment in last, (argv, last)


@pytest.mark.skipif(is_torch_bf16_gpu_available(), reason="this machine supports bf16")
def test_a_bf16_config_without_bf16_support_trains_in_fp32_with_one_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        *_, training_args = parse_arguments([str(REPO / "configs" / "viclip_ot.yaml"), "--output_dir", str(tmp_path)])
    assert not training_args.bf16
    assert [str(warning.message) for warning in caught if "bf16" in str(warning.message)] == [
        "bf16: no GPU here supports bf16, so this run trains and evaluates in fp32"
    ]


# ---------------------------------------------------------------- file modes


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "result.json") as temporary:
            temporary.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644
    assert [path.name for path in tmp_path.iterdir()] == ["result.json"]
