"""One batch from the batches of every process, with the gradient contract that makes a distributed loss exact."""

import torch
import torch.distributed as dist


class _ScaleGradient(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx, tensor, factor):
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def _gather_rows(tensor, sizes):
    """Concatenate every process's `tensor` (dim 0 sizes `sizes`, in rank order); this process's slot stays live
    with its gradient multiplied by the number of processes, the others are constants."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    parts = [part[:size] for part, size in zip(parts, sizes)]
    parts[rank] = _ScaleGradient.apply(tensor, world_size) if tensor.requires_grad else tensor
    return torch.cat(parts)


def gather_batch(image_embeds, text_embeds, caption_image_index, teacher_image_embeds=None, teacher_text_embeds=None):
    """One global batch from every process's (differently sized) batch, concatenated in rank order, with
    `caption_image_index` shifted by each process's image offset; unchanged without torch.distributed or with one
    process. None stays None.

    Gradient contract: every process computes the same loss L on the global batch; the gradient of L reaches only
    this process's own rows, multiplied by the world size W. Once DDP (or accelerate) averages the parameter
    gradients over the W processes, every parameter, encoder weights and the logit scale or bias alike, holds
    exactly the gradient of L that one process would get on the union of the batches.
    """
    inputs = (image_embeds, text_embeds, caption_image_index, teacher_image_embeds, teacher_text_embeds)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return inputs
    local_sizes = torch.tensor([image_embeds.shape[0], text_embeds.shape[0]], device=image_embeds.device)
    all_sizes = [torch.empty_like(local_sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(all_sizes, local_sizes)
    image_sizes, caption_sizes = torch.stack(all_sizes).T.tolist()
    image_offset = sum(image_sizes[: dist.get_rank()])
    sizes = (image_sizes, caption_sizes, caption_sizes, image_sizes, caption_sizes)
    shifted = (image_embeds, text_embeds, caption_image_index + image_offset, teacher_image_embeds, teacher_text_embeds)
    return tuple(None if tensor is None else _gather_rows(tensor, size) for tensor, size in zip(shifted, sizes))
