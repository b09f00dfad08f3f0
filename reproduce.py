"""The paper's loss ablation (Table 1), in miniature on the demo corpus or in full on UIT-OpenViIC.

    python reproduce.py                                  # demo study: every loss x teacher x seed, resumable
    python reproduce.py --report-only                    # only rebuild the table and figure from the finished runs
    python reproduce.py --study full --jobs 2            # full-length study: 8 rows x 10 paired seeds, resumable
    python reproduce.py --suite paper --data-root DIR    # UIT-OpenViIC: dedupe, teacher, seven configs, zero-shot

Demo study: every row of Table 1 that needs no external model (CLIP, SigLIP, CLIP+UOT, SigLIP+UOT, SIGROT,
ViCLIP-OT, ViSigLIP-OT) plus the SIGROT variants of `viclip_ot.losses`, trained with `configs/demo.yaml`'s towers
and optimiser for `--epochs` epochs (the same for every row), on the demo's test split, for three teachers: the
shipped MiniLM file, a perfect teacher (each image's one-hot scene factors: count, shape, colour, position,
background; its captions carry its row) and that teacher with Gaussian noise. Each finished run is one JSON file in
`--runs`; a rerun skips them. The table (mean and 95 % t-interval over seeds of avg R@K, alignment, modality gap and
the last training interval's plan row mass) goes to `benchmarks/results/ablation.md`, the figure beside it.

Full-length study (`--study full`): `configs/demo.yaml` as it is (all training images, its 16 epochs) for CLIP,
SigLIP, the paper's ViCLIP-OT and the demo default (normalised plan, prior temperature 0.02) with five teachers: the
three above, an identity graph (one-hot rows per image: "same image" only) and a random graph (random unit rows: no
information). Seeds are paired: a seed gives every row the same initial weights and training batches, which each
result file's fingerprints let the report check. The report (`benchmarks/results/full.md` and `.png`) gives each
row's paired difference to CLIP with its 95 % t-interval, the paired t-test and the Wilcoxon signed-rank test, and
the teachers' paired contrasts. Every result file records the torch threads and how the run was launched.
"""

import argparse
import sys
from pathlib import Path

import eval as eval_script
import train
from viclip_ot.cli import run
from viclip_ot.study.design import FULL_COMMON, PAPER_CONFIGS, ROWS, full_study_runs, study_runs
from viclip_ot.study.paper import run_paper_suite
from viclip_ot.study.report import write_full_report, write_report
from viclip_ot.study.runs import run_study
from viclip_ot.study.teachers import TEACHERS

REPO = Path(__file__).resolve().parent
RESULTS = REPO / "benchmarks" / "results"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=["demo", "paper"], default="demo")
    parser.add_argument("--config", default=REPO / "configs" / "demo.yaml", help="demo: the base config")
    parser.add_argument(
        "--rows",
        nargs="+",
        default=list(ROWS)[:-1],
        choices=list(ROWS),
        metavar="ROW",
        help="run in this order (default: all but the last, normalisation alone, left out to fit the study in an hour)",
    )
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS), metavar="TEACHER")
    parser.add_argument(
        "--study",
        choices=["ablation", "full"],
        default="ablation",
        help="demo: the short ablation (--rows x --teachers) or the full-length paired study (its own rows)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (ablation), 0 to 9 (full)")
    parser.add_argument("--epochs", type=float, default=6, help="ablation: training epochs of every run")
    parser.add_argument("--train-images", type=int, default=512, help="ablation: the first N training images")
    parser.add_argument("--logging-steps", type=int, default=8, help="ablation (full: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process when > 1")
    parser.add_argument("--runs", help="one JSON per finished run (default: benchmarks/results/<study>/runs)")
    parser.add_argument("--work-dir", help="teacher files, run folders (default: outputs/<study>)")
    parser.add_argument("--output", help="the Markdown table, the figure beside it (default: results/<study>.md)")
    parser.add_argument("--report-only", action="store_true", help="only write the table and figure")
    paper = parser.add_argument_group("--suite paper")
    paper.add_argument("--data-root", help="holds uit-openviic/, ktvic/, crossmodal3600/ (dedup/ is written there)")
    paper.add_argument(
        "--paper-rows", nargs="+", default=list(PAPER_CONFIGS), choices=list(PAPER_CONFIGS), metavar="ROW"
    )
    paper.add_argument("--teacher", default="Qwen/Qwen3-VL-Embedding-2B", help="teacher model of the graph")
    paper.add_argument("--sscd", default="sscd_disc_mixup.torchscript.pt", help="near-duplicate descriptor")
    paper.add_argument(
        "--train-option",
        nargs=2,
        action="append",
        default=[],
        metavar=("FIELD", "VALUE"),
        help="a train.py option for every config (e.g. num_train_epochs 1)",
    )
    args = parser.parse_args(argv)
    if args.suite == "paper" and not args.data_root:
        parser.error("--suite paper needs --data-root")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    name = "ablation-paper" if args.suite == "paper" else args.study
    args.seeds = args.seeds if args.seeds is not None else list(range(10) if args.study == "full" else range(3))
    args.runs = args.runs or RESULTS / args.study / "runs"
    args.work_dir = args.work_dir or REPO / "outputs" / (args.study if args.suite == "demo" else "ablation")
    args.output = args.output or RESULTS / f"{name}.md"
    return args


def main(argv=None):
    args = parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.suite == "paper":
        return run_paper_suite(
            train.main,
            eval_script.main,
            data_root=args.data_root,
            work_dir=args.work_dir,
            configs=REPO / "configs",
            rows=args.paper_rows,
            teacher_model=args.teacher,
            sscd=args.sscd,
            train_options=args.train_option,
            output=args.output,
        )
    if args.study == "full":
        expected, common, header = full_study_runs(args.seeds), dict(FULL_COMMON), {}
    else:
        expected = study_runs(args.rows, args.teachers, args.seeds)
        common = {
            **FULL_COMMON,
            "num_train_epochs": args.epochs,
            "max_train_images": args.train_images,
            "logging_steps": args.logging_steps,
        }
        header = {"epochs": args.epochs, "train_images": args.train_images}
    failed = []
    if not args.report_only:
        failed = run_study(
            train.main,
            expected,
            args.config,
            common,
            study=args.study,
            runs_folder=args.runs,
            work=args.work_dir,
            shipped_teacher=REPO / "assets" / "demo-teacher-train.safetensors",
            command=f"python reproduce.py --study {args.study} --jobs {args.jobs}",
            header=header,
            jobs=args.jobs,
            threads=args.threads,
        )
    (write_full_report if args.study == "full" else write_report)(args.runs, args.output, expected)
    if failed:
        raise SystemExit(f"error: {len(failed)} runs failed: {failed}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run(main, prog="reproduce.py")
