"""Model cards for saved and pushed ViCLIP-OT models: Hub metadata, results (model-index), usage, training config."""

from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from .retrieval import format_metrics_table

RECALL_KEYS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "avg_R")

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A ViCLIP-OT dual encoder for Vietnamese image-text retrieval: a `{{ vision_tower }}` image tower (timm) and a
`{{ text_tower }}` text tower (transformers) mapped to one {{ projection_dim }}-d L2-normalised space, trained with
the `{{ loss_type }}` loss (contrastive learning plus SIGROT, similarity-graph regularised unbalanced optimal
transport).

## Usage

```python
from transformers import AutoModel

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True).eval()
images = model.encode_image(["street.jpg", "market.jpg"])  # L2-normalised rows
texts = model.encode_text(["người đàn ông đi xe máy trên đường phố"])
scores = texts @ images.T
```

It also loads with `SentenceTransformer("{{ repo_id }}", trust_remote_code=True)`, whose `encode()` takes strings
and PIL images.

The transformers pipelines work too: zero-shot classification against Vietnamese labels (softmax over the labels
of the image's logits) and image embeddings (the L2-normalised image embedding):

```python
from transformers import pipeline

classifier = pipeline("zero-shot-image-classification", model="{{ repo_id }}", trust_remote_code=True)
classifier("street.jpg", candidate_labels=["xe máy", "con mèo", "tách cà phê"], hypothesis_template="một bức ảnh về {}")
extractor = pipeline("image-feature-extraction", model="{{ repo_id }}", trust_remote_code=True)
embedding = extractor("street.jpg")[0]  # projection_dim floats
```

## Results

{{ results_table }}

## Training configuration

```yaml
{{ training_config }}
```
"""


def results_table(results, dataset_name):
    """The Markdown table of one evaluation (`format_metrics_table`'s layout)."""
    if not results:
        return "No evaluation results yet."
    return format_metrics_table({dataset_name or "evaluation": results})


def hub_id(tower):
    """The Hub repository of a tower name as given to `from_towers`, or None for a local file or folder: timm names
    become timm's repository (`vit_base_patch16_dinov3.lvd1689m` -> `timm/vit_base_patch16_dinov3.lvd1689m`)."""
    tower = str(tower)
    if not tower or Path(tower).exists() or tower.startswith(("local-dir:", "/", ".", "~")):
        return None
    if tower.startswith("hf-hub:"):
        return tower.removeprefix("hf-hub:")
    if "/" not in tower:
        pretrained = get_pretrained_cfg(tower)
        return pretrained.hf_hub_id if pretrained is not None and pretrained.hf_hub_id else None
    return tower


def write_model_card(
    folder,
    model_config,
    *,
    repo_id=None,
    model_name=None,
    results=None,
    dataset_name=None,
    split="test",
    training_config=None,
    base_models=(),
    license="gpl-3.0",
):
    """Write `folder/README.md`; `results` are `retrieval_metrics` keys (without an `eval_` prefix), in percent.

    The title is `model_name` (default: the repository's name); `base_models` are the towers as given to
    `from_towers`, listed by their Hub ids (local ones are left out).
    """
    model_name = model_name or (repo_id.split("/")[-1] if repo_id else "ViCLIP-OT")
    eval_results = [
        EvalResult(
            task_type="image-text-retrieval",
            dataset_type=dataset_name or "unknown",
            dataset_name=dataset_name or "unknown",
            dataset_split=split,
            metric_type="recall",
            metric_name=key,
            metric_value=round(float(results[key]), 2),
        )
        for key in RECALL_KEYS
        if results and key in results
    ]
    card_data = ModelCardData(
        language=["vi"],
        license=license,
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=["viclip-ot", "image-text-retrieval", "clip", "optimal-transport", "sentence-transformers", "vietnamese"],
        datasets=[dataset_name] if dataset_name else None,
        base_model=[hub for hub in map(hub_id, base_models) if hub] or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        model_name=model_name,
        repo_id=repo_id or "path/to/this/folder",
        vision_tower=model_config.vision_model_name,
        text_tower=model_config.text_config._name_or_path or model_config.text_config.model_type,
        projection_dim=model_config.projection_dim,
        loss_type=(training_config or {}).get("loss_type", "unknown"),
        results_table=results_table(results, dataset_name),
        training_config=yaml.safe_dump(training_config or {}, sort_keys=True, allow_unicode=True).strip(),
    )
    card.save(Path(folder) / "README.md")
    return card
