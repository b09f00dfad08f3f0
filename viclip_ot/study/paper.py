"""The paper's suite on UIT-OpenViIC: dedupe reports of KTVIC against UIT-OpenViIC train, the teacher embeddings,
the seven configs trained and evaluated on `eval.py --suite paper`, the table beside the published numbers."""

import json
from pathlib import Path

from viclip_ot.files import write_text

from .design import PAPER_CONFIGS
from .report import paper_table


def run_paper_suite(
    train_main, evaluate_main, *, data_root, work_dir, configs, rows, teacher_model, sscd, train_options, output
):
    """Dedupe reports of KTVIC train and test against UIT-OpenViIC train (`sscd`: the descriptor), the teacher
    embeddings of UIT-OpenViIC train (`teacher_model`), the configs of `rows` (files in `configs`) trained on it
    through `train_main` with `train_options` ((field, value) pairs), each evaluated through `evaluate_main`
    (eval.py's `main`, `--suite paper`); every step is skipped when its output exists. Writes `output` and prints
    Avg R@K per evaluation set beside the paper's; returns the evaluations per row."""
    from dataset_scripts import dedupe, teacher_embeddings
    from viclip_ot.arguments import read_config
    from viclip_ot.losses import LOSS_TYPES

    root, work = Path(data_root), Path(work_dir)
    for split in ("train", "test"):
        report = root / "dedup" / f"ktvic-{split}.json"
        if not report.is_file():
            dedupe.main(
                [
                    "--reference-dir",
                    str(root / "uit-openviic"),
                    "--target-corpus",
                    "ktvic",
                    "--target-dir",
                    str(root / "ktvic"),
                    "--target-split",
                    split,
                    "--output",
                    str(report),
                    "--model",
                    str(sscd),
                    "--num-workers",
                    "0",
                    "--cache-dir",
                    str(work / "cache"),
                ]
            )
    teacher = work / "teachers" / "uit-openviic-train.safetensors"
    if not teacher.is_file():
        teacher_embeddings.main(
            [
                "--corpus",
                "uit-openviic",
                "--data-dir",
                str(root / "uit-openviic"),
                "--split",
                "train",
                "--teacher",
                teacher_model,
                "--output",
                str(teacher),
            ]
        )
    overrides = [item for pair in train_options for item in ("--" + pair[0], pair[1])]
    results = {}
    for row in rows:
        folder = work / PAPER_CONFIGS[row]
        config = Path(configs) / f"{PAPER_CONFIGS[row]}.yaml"
        evaluation = folder / "evaluation.json"
        if not evaluation.is_file():
            if not (folder / "final" / "config.json").is_file():
                options = ["--data_dir", str(root / "uit-openviic"), "--output_dir", str(folder)]
                if LOSS_TYPES[read_config(config)["loss_type"]].needs_teacher:
                    options += ["--teacher_embeddings", str(teacher)]
                train_main([str(config), *options, *overrides])
            evaluate_main(
                [
                    "--model",
                    str(folder / "final"),
                    "--suite",
                    "paper",
                    "--data-root",
                    str(root),
                    "--cache-dir",
                    str(work / "cache"),
                    "--output",
                    str(evaluation),
                ]
            )
        results[row] = json.loads(evaluation.read_text())["evaluations"]
    table = paper_table(results)
    write_text(Path(output), table)
    print(table)
    return results
