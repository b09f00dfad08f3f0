"""What the studies train: the loss rows and their options, the full study's (row, teacher) pairs and contrasts, the
metrics they compare, the paper's seven configs and the Avg R@K it publishes."""

from dataclasses import asdict
from pathlib import Path

from viclip_ot.arguments import read_config
from viclip_ot.losses import LossSettings

from .teachers import CONTROLS, TEACHERS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def initial_scale_and_bias(config):
    """The logit scale and bias a SigLIP config (a file of `configs/`) starts from."""
    values = read_config(CONFIGS / config)
    return {name: values[name] for name in ("logit_scale_init_value", "logit_bias_init_value")}


# name -> train.py options; the paper's Table 1 rows, then the variants of this repository
ROWS = {
    "CLIP": {"loss_type": "clip"},
    "SigLIP": {"loss_type": "siglip", **initial_scale_and_bias("siglip.yaml")},
    "CLIP+UOT": {"loss_type": "clip_uot"},
    "SigLIP+UOT": {"loss_type": "siglip_uot", **initial_scale_and_bias("siglip_uot.yaml")},
    "SIGROT": {"loss_type": "sigrot", "contrastive_weight": 0.0},
    "ViCLIP-OT": {"loss_type": "clip_sigrot"},
    "ViSigLIP-OT": {"loss_type": "siglip_sigrot", **initial_scale_and_bias("visiglip_ot.yaml")},
    "ViCLIP-OT, normalised plan, prior T 0.02": {
        "loss_type": "clip_sigrot",
        "normalise_plan": True,
        "prior_temperature": 0.02,
    },
    "ViCLIP-OT, normalised plan": {"loss_type": "clip_sigrot", "normalise_plan": True},
}
# every run starts from the paper's loss settings (the demo config's own choices do not leak into the rows)
PAPER_LOSS = {name: value for name, value in asdict(LossSettings()).items() if name != "loss_type"}
STUDY_METRICS = ("avg_R", "alignment", "modality_gap", "plan_row_mass")
# every run of both studies: no gradient caching (the same gradient as the demo's chunks of 32, one forward fewer), no
# validation or checkpoints during training (the demo config's per-epoch validation only picks which checkpoint to
# keep; the training steps are the same), the final model evaluated on the test split
FULL_COMMON = {
    "gradcache_chunk_size": 0,
    "eval_strategy": "no",
    "save_strategy": "no",
    "load_best_model_at_end": False,
    "disable_tqdm": True,
}
DEMO_DEFAULT = "ViCLIP-OT, normalised plan, prior T 0.02"  # configs/demo.yaml's loss
# --study full: (row, teacher) at the demo config's full length (all 1,000 training images, its 16 epochs)
FULL_STUDY = (
    ("CLIP", None),
    ("SigLIP", None),
    ("ViCLIP-OT", TEACHERS[0]),
    *((DEMO_DEFAULT, teacher) for teacher in (*TEACHERS, *CONTROLS)),
)
# paired contrasts between the demo default's teachers: does what the graph knows matter?
TEACHER_CONTRASTS = (("perfect", "identity"), ("perfect", "random"), ("identity", "random"), (TEACHERS[0], "identity"))

# --suite paper: the seven configs (Table 1's rows) and the Avg R@K the paper publishes for four of them.
PAPER_CONFIGS = {
    "CLIP": "clip",
    "SigLIP": "siglip",
    "CLIP+UOT": "clip_uot",
    "SigLIP+UOT": "siglip_uot",
    "SIGROT": "sigrot",
    "ViCLIP-OT": "viclip_ot",
    "ViSigLIP-OT": "visiglip_ot",
}
PAPER_AVG_R = {
    "UIT-OpenViIC test": {"CLIP": 61.59, "SigLIP": 64.77, "ViCLIP-OT": 67.34, "ViSigLIP-OT": 68.96},
    "KTVIC test (dedup)": {"CLIP": 79.32, "SigLIP": 81.38, "ViCLIP-OT": 82.68, "ViSigLIP-OT": 82.78},
    "Crossmodal-3600 vi": {"CLIP": 45.13, "SigLIP": 49.59, "ViCLIP-OT": 56.85, "ViSigLIP-OT": 56.17},
}


def study_runs(rows, teachers, seeds):
    """(row, teacher or None, seed) of the study, in the order of `rows`: rows without a teacher run once per seed."""
    from viclip_ot.losses import LOSS_TYPES

    runs = []
    for row in rows:
        needs_teacher = LOSS_TYPES[ROWS[row]["loss_type"]].needs_teacher
        runs += [(row, teacher, seed) for seed in seeds for teacher in (teachers if needs_teacher else [None])]
    return runs


def full_study_runs(seeds):
    """(row, teacher, seed) of the full-length study, seed by seed: every row of a seed before the next seed."""
    return [(row, teacher, seed) for seed in seeds for row, teacher in FULL_STUDY]
