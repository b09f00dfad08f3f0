"""Two gloo processes, each with its own (differently sized) part of a batch, give the loss and, after DDP's gradient
averaging, the gradients of one process on the union of both parts."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from viclip_ot.losses import ContrastiveOTLoss, LossSettings

LOSS_TYPES = ("clip_sigrot", "siglip_sigrot", "clip_uot", "siglip_uot", "siglip")
CAPTIONS_PER_IMAGE = (2, 1, 3, 1, 2)  # 9 captions of 5 images
RANK_IMAGES = ((0, 1), (2, 3, 4))  # process 0 holds 2 images (3 captions), process 1 holds 3 (6 captions)
WORLD_SIZE = len(RANK_IMAGES)


def union_batch():
    """Image and caption features, teachers, and caption_image_index of the whole batch (float64)."""
    generator = torch.Generator().manual_seed(0)
    index = torch.repeat_interleave(torch.arange(5), torch.tensor(CAPTIONS_PER_IMAGE))
    return {
        "image_features": torch.randn(5, 6, generator=generator, dtype=torch.float64),
        "text_features": torch.randn(len(index), 7, generator=generator, dtype=torch.float64),
        "teacher_image": torch.randn(5, 3, generator=generator, dtype=torch.float64),
        "teacher_text": torch.randn(len(index), 3, generator=generator, dtype=torch.float64),
        "caption_image_index": index,
    }


def part_of(batch, images):
    """One process's share: its images, their captions, caption_image_index local to the share."""
    captions = torch.cat([torch.nonzero(batch["caption_image_index"] == image).flatten() for image in images])
    local_index = {image: position for position, image in enumerate(images)}
    return {
        "image_features": batch["image_features"][list(images)],
        "text_features": batch["text_features"][captions],
        "teacher_image": batch["teacher_image"][list(images)],
        "teacher_text": batch["teacher_text"][captions],
        "caption_image_index": torch.tensor([local_index[int(i)] for i in batch["caption_image_index"][captions]]),
    }


class TinyModel(nn.Module):
    """Linear "encoders" with a learnable logit scale and bias, identical on every process."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.image = nn.Linear(6, 4, dtype=torch.float64)
        self.text = nn.Linear(7, 4, dtype=torch.float64)
        self.logit_scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0, dtype=torch.float64))


def loss_and_gradients(model, batch, loss_type):
    """The loss of `batch` (gathered across processes when several run) and the parameters' gradients."""
    model.zero_grad()
    output = ContrastiveOTLoss(LossSettings(loss_type, ot_max_iter=50, ot_tol=None))(
        F.normalize(model.image(batch["image_features"]), dim=-1),
        F.normalize(model.text(batch["text_features"]), dim=-1),
        batch["caption_image_index"],
        model.logit_scale.exp(),
        model.logit_bias,
        batch["teacher_image"],
        batch["teacher_text"],
    )
    output.loss.backward()
    return output.loss.detach(), {
        name: torch.zeros_like(parameter) if parameter.grad is None else parameter.grad.clone()  # unused bias
        for name, parameter in model.named_parameters()
    }


def worker(rank, port, folder):
    """Loss and DDP-averaged gradients of every loss type on this process's share, saved to `folder`/rank.pt."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        model, batch, results = TinyModel(), part_of(union_batch(), RANK_IMAGES[rank]), {}
        for loss_type in LOSS_TYPES:
            loss, gradients = loss_and_gradients(model, batch, loss_type)
            for gradient in gradients.values():  # what DDP does
                dist.all_reduce(gradient)
                gradient /= WORLD_SIZE
            results[loss_type] = (loss, gradients)
        torch.save(results, folder / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    mp.start_processes(worker, args=(free_port(), folder), nprocs=WORLD_SIZE, start_method="spawn")
    return [torch.load(folder / f"{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_two_processes_equal_one_on_the_union(distributed_results, loss_type):
    expected_loss, expected_gradients = loss_and_gradients(TinyModel(), union_batch(), loss_type)
    for rank in range(WORLD_SIZE):
        loss, gradients = distributed_results[rank][loss_type]
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        for name, gradient in gradients.items():
            torch.testing.assert_close(gradient, expected_gradients[name], rtol=1e-10, atol=1e-12, msg=name)
