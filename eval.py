"""Evaluate an image-text retrieval model (ViCLIP-OT or a baseline dual encoder) on a corpus split or the paper's suite.

    python eval.py --model <folder or hub id> --dataset ktvic --data-dir data/ktvic --split test \\
        --dedup-report data/dedup/ktvic-test.json --output results.json
    python eval.py --model <folder or hub id> --suite paper --data-root data --bootstrap 1000 --plots plots/
    accelerate launch eval.py ...   # several GPUs: each encodes a share of the batches

Prints a table laid out like the paper's and writes the results as JSON, and the table as Markdown next to it.
"""

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator

from dataset_scripts import CORPORA
from dataset_scripts.loading import add_corpus_option_argument
from viclip_ot.cli import run
from viclip_ot.encoders import load_encoder
from viclip_ot.evaluation import EvalSet, evaluate_encoder, paper_suite
from viclip_ot.files import write_text
from viclip_ot.retrieval import format_metrics_table


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help="a ViCLIP-OT, transformers (CLIP, SigLIP, ...) or "
        "sentence-transformers (jina-clip-v2, ...) model: folder or Hub id",
    )
    parser.add_argument(
        "--text-model",
        help="encode texts with this sentence-transformers model, trained into "
        "--model's space (multilingual CLIP: --model clip-ViT-B-32 "
        "--text-model clip-ViT-B-32-multilingual-v1)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (jina-clip-v2)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=list(CORPORA), help="evaluate one split of this corpus")
    what.add_argument(
        "--suite",
        choices=["paper"],
        help="UIT-OpenViIC test, KTVIC train and test (deduplicated), Crossmodal-3600 vi, from --data-root",
    )
    parser.add_argument("--data-dir", help="the corpus folder as downloaded (not for demo)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dedup-report", help="remove the near-duplicates listed by python -m dataset_scripts.dedupe")
    parser.add_argument("--language", help="caption language (crossmodal3600), e.g. vi")
    add_corpus_option_argument(parser, "--option", "another corpus option, e.g. test_size=50 for demo")
    parser.add_argument(
        "--data-root",
        help="--suite paper: holds uit-openviic/, ktvic/, crossmodal3600/ and dedup/ktvic-{train,test}.json",
    )
    for split in ("train", "test"):
        parser.add_argument(
            f"--ktvic-{split}-dedup",
            metavar="FILE",
            help=f"--suite paper: the KTVIC {split} report (default: DATA_ROOT/dedup/ktvic-{split}.json)",
        )
    parser.add_argument("--cache-dir", help="where built corpora are cached (default: the datasets cache)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (with their captions)")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast; auto: bf16 on a GPU that supports it, fp32 otherwise",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="add 95%% intervals from N resamples of the images, each with all its captions",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the pictures")
    parser.add_argument(
        "--output", default="results.json", help="the JSON file to write; the Markdown table goes next to it (.md)"
    )
    parser.add_argument("--plots", metavar="DIR", help="save an embedding map and retrieval examples here")
    args = parser.parse_args(argv)
    if args.suite and not args.data_root:
        parser.error("--suite paper needs --data-root")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    return args


def evaluation_sets(args) -> list[EvalSet]:
    if args.suite:
        return paper_suite(args.data_root, args.ktvic_train_dedup, args.ktvic_test_dedup)
    options = dict(args.option) | ({"language": args.language} if args.language else {})
    name = " ".join([args.dataset, args.split, *([args.language] if args.language else [])])
    name += " (dedup)" if args.dedup_report else ""
    return [EvalSet(name, args.dataset, args.data_dir, args.split, args.dedup_report, options)]


def save_plots(encoded, dataset, folder, title, seed):
    from viclip_ot.plots import plot_embedding_map, plot_retrieval_examples

    folder.mkdir(parents=True, exist_ok=True)
    plot_embedding_map(encoded, folder / "embedding_map.png", title, seed=seed)
    plot_retrieval_examples(encoded, dataset, folder / "retrieval_examples.png", title, seed=seed)


def main(argv=None) -> dict:
    """Run the evaluation; returns what it writes to the JSON file."""
    args = parse_args(argv)
    sets = evaluation_sets(args)
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and gpu_bf16)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    with accelerator.main_process_first():
        corpora = [eval_set.load(args.cache_dir) for eval_set in sets]  # corpus errors come before the model loads
    encoder = load_encoder(
        args.model, accelerator.device, text_model=args.text_model, trust_remote_code=args.trust_remote_code
    )
    results = {
        "model": args.model,
        "text_model": args.text_model,
        "encoder": type(encoder).__name__,
        "precision": "bf16" if bf16 else "fp32",
        "bootstrap": {"samples": args.bootstrap, "seed": args.seed} if args.bootstrap else None,
        "evaluations": {},
    }
    for eval_set, dataset in zip(sets, corpora):
        encoded, metrics = evaluate_encoder(
            encoder, dataset, args.batch_size, accelerator, args.bootstrap, args.seed, desc=f"{eval_set.name}: encoding"
        )
        results["evaluations"][eval_set.name] = {
            **asdict(eval_set),
            "images": len(dataset),
            "captions": len(encoded.text_embeds),
            "metrics": metrics,
        }
        if args.plots and accelerator.is_main_process:
            folder = Path(args.plots) / (re.sub(r"[^\w.-]+", "-", eval_set.name).strip("-") if len(sets) > 1 else "")
            save_plots(encoded, dataset, folder, f"{Path(args.model).name}: {eval_set.name}", args.seed)

    if accelerator.is_main_process:
        evaluations = results["evaluations"]
        report = "\n\n".join(
            [
                f"Model: {args.model}",
                format_metrics_table({name: entry["metrics"] for name, entry in evaluations.items()}),
                "\n".join(
                    f"- {name}: {entry['images']} images, {entry['captions']} captions"
                    for name, entry in evaluations.items()
                ),
            ]
        )
        output = Path(args.output)
        write_text(output, json.dumps(results, indent=2, ensure_ascii=False))
        write_text(output.with_suffix(".md"), report + "\n")
        print(f"\n{report}\n\nwritten to {output} and {output.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    run(main, prog="eval.py")
