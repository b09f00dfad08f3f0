"""Gradient caching: one large contrastive batch at the memory cost of one chunk.

1. Encode every chunk without gradient, remembering the random state before each chunk.
2. Compute the loss once on all embeddings (as detached leaves) and back-propagate it to them: the cache.
3. Return the loss as a leaf whose backward (the trainer's `accelerator.backward`) re-encodes each chunk with
   gradient, replaying its random state (the same dropout masks), and back-propagates `sum(outputs * cached
   gradient)` times the incoming gradient (gradient-accumulation and mixed-precision scaling) over the outputs the
   loss used (the trainer's loss takes the logit scale and bias from the last chunk's outputs; none of them when it
   does not use them, e.g. a CLIP loss on a model with a bias, or SIGROT alone with a fixed prior temperature).

As sentence-transformers' `CachedMultipleNegativesRankingLoss`. Every chunk but the last is re-encoded under
`no_sync`, so that DDP reduces the gradients once per step.
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


def cached_loss(encode, chunks, loss_fn, no_sync=contextlib.nullcontext):
    """`loss_fn(all chunk outputs)`, detached, whose backward back-propagates it through `encode` chunk by chunk.

    Args:
        encode: `encode(chunk) -> tuple of tensors or None` (e.g. image and text embeddings of the chunk, and the
            logit scale and bias the model used).
        chunks: the inputs of `encode`, in order; tensors in them decide which devices' random states are kept.
        loss_fn: `loss_fn(list of per-chunk tuples) -> scalar loss` on the whole batch.
        no_sync: a context manager that stops DDP from reducing gradients (the re-encoding of all chunks but the
            last).
    Returns:
        The loss: a leaf tensor that requires gradient; backward through it runs step 3.
    """
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState.capture(*_tensors(chunk)))
            cached.append(tuple(None if out is None else out.detach().requires_grad_() for out in encode(chunk)))

    with torch.enable_grad():
        loss = loss_fn(cached)
    torch.autograd.backward(loss, inputs=[out for outputs in cached for out in outputs if out is not None])

    def backward_hook(grad_output):
        with torch.enable_grad():
            for index, (chunk, state, outputs) in enumerate(zip(chunks, states, cached)):
                last = index == len(chunks) - 1
                with state.replay(), contextlib.nullcontext() if last else no_sync():
                    pairs = zip(encode(chunk), outputs)
                    surrogate = sum(
                        (out * cache.grad).sum() for out, cache in pairs if cache is not None and cache.grad is not None
                    )
                    (surrogate * grad_output).backward()

    loss = loss.detach().requires_grad_()
    loss.register_hook(backward_hook)
    return loss


def _tensors(chunk):
    values = chunk.values() if isinstance(chunk, dict) else chunk
    return [value for value in values if isinstance(value, torch.Tensor)]
