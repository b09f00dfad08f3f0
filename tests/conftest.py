"""Shared fixtures: small towers built offline (no downloads), the replicas of the Hub towers, real sample
photographs."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: it reads this once

import numpy as np
import pytest
import torch
from PIL import Image

from viclip_ot.small_towers import save_small_text_tower, small_model

torch.set_num_threads(2)

VIETNAMESE_TEXTS = [
    "hai hình tròn màu đỏ ở bên trái",
    "một hình vuông màu xanh lá ở giữa bức ảnh",
    "ba tam giác màu vàng trên nền trắng",
    "một con mèo đang nằm trên ghế sofa",
    "người đàn ông đi xe máy trên đường phố Hà Nội",
    "tách cà phê đặt trên bàn gỗ",
    "khung cảnh xuất hiện ở phía trước một căn nhà",
    "có một căn nhà cao tầng xuất hiện ở trong bức ảnh",
    "nhiều người đang đứng chờ xe buýt",
    "bầu trời xanh và những đám mây trắng",
]
CAPTIONS = VIETNAMESE_TEXTS[:4]  # what the tests of the replicas (`sbert_dir`, `tower_dirs`) encode


@pytest.fixture(scope="session")
def text_tower_dir(tmp_path_factory):
    """A small BERT text tower with a WordPiece tokenizer trained on Vietnamese sentences."""
    return save_small_text_tower(tmp_path_factory.mktemp("bert_tower"), VIETNAMESE_TEXTS * 5, model_type="bert")


@pytest.fixture(scope="session")
def roberta_tower_dir(tmp_path_factory):
    """A small RoBERTa text tower (the paper's text tower family)."""
    return save_small_text_tower(tmp_path_factory.mktemp("roberta_tower"), VIETNAMESE_TEXTS * 5, model_type="roberta")


@pytest.fixture(scope="module")
def sbert_dir(tmp_path_factory):
    """The `keepitreal/vietnamese-sbert` replica (`replicas.vietnamese_sbert`), one per test module."""
    from replicas import vietnamese_sbert

    return vietnamese_sbert(tmp_path_factory.mktemp("vietnamese-sbert"), VIETNAMESE_TEXTS * 3)


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    """The timm Hub folders of `replicas.TOWERS`, one set per test module: {name: (folder, the exported model)}."""
    from replicas import TOWERS, timm_hub_folder

    root = tmp_path_factory.mktemp("timm")
    return {name: timm_hub_folder(root / name, arch, args) for name, (arch, args) in TOWERS.items()}


@pytest.fixture
def make_model(roberta_tower_dir):
    """Build a small model (DINOv3 layout, RoBERTa text tower by default) with its processor attached."""

    def make(text_folder=None, seed=0, **config_overrides):
        text_folder = text_folder or roberta_tower_dir
        torch.manual_seed(seed)
        return small_model(text_folder, **config_overrides).eval()

    return make


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped with scikit-image and scikit-learn, as RGB PIL images."""
    from skimage import data

    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    return [Image.fromarray(np.asarray(array)) for array in arrays]


@pytest.fixture(scope="module")
def demo_model_dir(tmp_path_factory):
    """A saved model folder with demo-size towers (`search_fixtures.save_demo_model`), one per test module."""
    from search_fixtures import save_demo_model

    folder = tmp_path_factory.mktemp("demo_model")
    return save_demo_model(folder, folder / "cache")


@pytest.fixture(scope="module")
def demo_model(demo_model_dir):
    """`demo_model_dir` loaded in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(demo_model_dir, trust_remote_code=True).eval()


def two_process_launch(port):
    """The command line that runs a module or script in two CPU processes under `accelerate launch` on `port`
    (with `ACCELERATE_USE_CPU=true` in the environment)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    return [*launch, "--main_process_port", str(port)]
