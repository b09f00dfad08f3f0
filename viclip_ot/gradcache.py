"""Gradient caching: one large contrastive batch at the memory cost of one chunk.

1. Encode every chunk without gradient, remembering the random state before each chunk.
2. Compute the loss once on all embeddings (as detached leaves) and back-propagate it to them: the cache.
3. Re-encode each chunk with gradient, replaying its random state (the same dropout masks), and back-propagate
   `sum(embeddings * cached gradient)`; parameters used only by the loss (the logit scale and bias) receive their
   gradient once, through the last chunk's surrogate (none when the loss does not use them, e.g. a CLIP loss on a
   model with a bias, or SIGROT alone with a fixed prior temperature).

Everything but the last chunk runs under `no_sync` so that DDP reduces the gradients once per step.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import get_device_states, set_device_states


@dataclass
class RandomState:
    """The CPU and accelerator random states at one moment."""

    cpu_state: torch.Tensor
    devices: list
    device_states: list

    @classmethod
    def capture(cls, *tensors):
        devices, device_states = get_device_states(*tensors)
        return cls(torch.get_rng_state(), devices, device_states)

    @contextlib.contextmanager
    def replay(self):
        """Run the block with this random state, then restore the state from before the block."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


def cached_backward(
    encode, chunks, loss_fn, loss_parameters, backward=torch.autograd.backward, no_sync=contextlib.nullcontext
):
    """Back-propagate `loss_fn(all chunk embeddings, parameter leaves)` through `encode`, one chunk at a time.

    Args:
        encode: `encode(chunk) -> tuple of tensors` (e.g. image and text embeddings of the chunk).
        chunks: the inputs of `encode`, in order; tensors in them decide which devices' random states are kept.
        loss_fn: `loss_fn(list of per-chunk tuples, parameter leaves) -> (loss, extras)` on the whole batch.
        loss_parameters: parameters the loss uses directly (logit scale, bias); the loss sees detached copies.
        backward: how to back-propagate a scalar (`accelerator.backward` under mixed precision).
        no_sync: a context manager that stops DDP from reducing gradients (all chunks but the last).
    Returns:
        `(loss, extras)` of `loss_fn`, detached.
    """
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState.capture(*_tensors(chunk)))
            cached.append(tuple(output.detach().requires_grad_() for output in encode(chunk)))

    leaves = [parameter.detach().requires_grad_() for parameter in loss_parameters]
    with torch.enable_grad():
        loss, extras = loss_fn(cached, leaves)
    torch.autograd.backward(loss, inputs=[t for outputs in cached for t in outputs] + leaves)

    for index, (chunk, state, outputs) in enumerate(zip(chunks, states, cached)):
        last = index == len(chunks) - 1
        with state.replay(), contextlib.nullcontext() if last else no_sync():
            surrogate = sum((output * cache.grad).sum() for output, cache in zip(encode(chunk), outputs))
            if last:
                used = [(p, leaf.grad) for p, leaf in zip(loss_parameters, leaves) if leaf.grad is not None]
                surrogate = surrogate + sum((p * grad).sum() for p, grad in used)
            backward(surrogate)
    return loss.detach(), extras


def _tensors(chunk):
    values = chunk.values() if isinstance(chunk, dict) else chunk
    return [value for value in values if isinstance(value, torch.Tensor)]
