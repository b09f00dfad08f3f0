"""The entropic unbalanced Sinkhorn solver, with a hand-written backward, and the transport plan of a batch's caption
rows that SIGROT and the "+ UOT" baselines share."""

import math

import torch

from modeling_viclip_ot import caption_row_logits, full_precision


@full_precision
def unbalanced_sinkhorn(
    cost, reg, reg_m, a=None, b=None, max_iter=200, tol=1e-6, check_every=10, detach_plan=False, return_converged=False
):
    """The entropic unbalanced transport plan that `ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m,
    reg_type="kl")` computes:

        argmin_{P >= 0} <P, C> + reg KL(P || a b^T) + reg_m KL(P 1 || a) + reg_m KL(P^T 1 || b),

    KL the generalised one. Same iterations as POT, from u = v = 1: u <- (a / K v)^fi, v <- (b / K^T u)^fi,
    K = exp(-C / reg) a b^T, fi = reg_m / (reg_m + reg) (fi = 1 for reg_m = inf: balanced OT), P = diag(u) K diag(v).

    Stabilised: the first iteration is done in the log domain and its plan becomes the working kernel ("absorption");
    the next iterations rescale that kernel by vectors, two matrix-vector products per iteration like POT. When the
    scalings have drifted past exp(+-B/2) at a check, they are absorbed again (B = ln(largest float) / 2 - 4: 40 in
    float32); they are clamped to exp(+-B) and the products to the smallest normal float, so that no input overflows
    or divides by zero (small `reg` in float32 included).

    Convergence: POT's criterion, (max|u - u'| / max(|u|, |u'|, 1) + the same for v) / 2 < tol over the last
    iteration, evaluated every `check_every` iterations (one host synchronisation each); `tol=None` runs exactly
    `max_iter` iterations with no synchronisation at all and no re-absorption: exact as long as the scalings stay
    within exp(+-B) of the first iteration's, as they do for the paper's reg = 0.05 on cosine costs.

    Gradients flow through every iteration (the paper's choice); `detach_plan=True` returns a constant plan instead.
    The scaling iterations are one autograd node whose backward replays them in reverse (`_ScalingIterations`).

    Args:
        cost: (N, M) cost matrix. a, b: positive (N,), (M,) weights, uniform 1/N, 1/M by default.
        reg: entropic regularisation (eps). reg_m: marginal relaxation (tau), `float("inf")` for balanced OT.
        return_converged: also return whether the criterion was met before `max_iter` (None when `tol` is None).
    Returns:
        The (N, M) plan, float32 (float64 for float64 input); `(plan, converged)` with `return_converged`.
    """
    num_rows, num_cols = cost.shape
    log_a = cost.new_full((num_rows,), -math.log(num_rows)) if a is None else a.log()
    log_b = cost.new_full((num_cols,), -math.log(num_cols)) if b is None else b.log()
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    options = {"fi": fi, "bound": _log_scaling_bound(cost.dtype), "tol": tol, "check_every": check_every}
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_plan):
        log_kernel = log_a[:, None] + log_b - cost / reg
        beta, done = cost.new_zeros(num_cols), 0  # beta = log v of POT's iterations
        while True:
            # absorption: one log-domain iteration, whose plan is the kernel that the scalings u, v act on
            alpha = fi * (log_a - torch.logsumexp(log_kernel + beta, dim=1))
            beta = fi * (log_b - torch.logsumexp(log_kernel + alpha[:, None], dim=0))
            kernel = torch.exp(log_kernel + alpha[:, None] + beta)
            done += 1
            if done >= max_iter:
                plan, converged = kernel, False
                break
            a_term, b_term = fi * log_a - (1 - fi) * alpha, fi * log_b - (1 - fi) * beta
            log_u, log_v, steps, stop = _ScalingIterations.apply(
                kernel, a_term, b_term, alpha.detach(), beta.detach(), max_iter - done, options
            )
            done += steps
            alpha, beta = alpha + log_u, beta + log_v
            if stop != "drifted":  # the plan diag(u) K diag(v), as one exp (which keeps only its result for backward)
                plan, converged = torch.exp(log_kernel + alpha[:, None] + beta), stop == "converged"
                break
    return (plan, None if tol is None else converged) if return_converged else plan


class _ScalingIterations(torch.autograd.Function):
    """Sinkhorn iterations on a fixed kernel K, on log scalings relative to the absorbed potentials (alpha, beta):

        log u <- a_term - fi log(K v),    log v <- b_term - fi log(K^T u),    from log u = log v = 0,

    for at most `max_steps` iterations, stopping at convergence or, to be absorbed again, when the scalings drift too
    far (see `unbalanced_sinkhorn`). Forward returns (log u, log v, iterations run, why it stopped: "converged",
    "drifted" or "max_iter").
    Backward replays the iterations in reverse from the saved vectors; the gradient of K, one outer product per
    matrix-vector product, is summed in one matrix product. Clamped entries pass no gradient.
    """

    @staticmethod
    def forward(ctx, kernel, a_term, b_term, alpha, beta, max_steps, options):
        fi, bound, tol, check_every = options["fi"], options["bound"], options["tol"], options["check_every"]
        tiny, rows, columns = torch.finfo(kernel.dtype).tiny, len(a_term), len(b_term)
        # row t holds the vectors of iteration t + 1, which reads v[t] = exp(log_v[t]); log_v[0] = 0 is the start
        v, kv, u, ktu = (kernel.new_empty(max_steps, size) for size in (columns, rows, rows, columns))
        log_u, log_v = kernel.new_zeros(max_steps + 1, rows), kernel.new_zeros(max_steps + 1, columns)
        stop = "max_iter"
        for t in range(max_steps):
            steps = t + 1
            torch.exp(log_v[t], out=v[t])
            torch.mv(kernel, v[t], out=kv[t])
            torch.sub(a_term, kv[t].clamp_min(tiny).log(), alpha=fi, out=log_u[steps]).clamp_(-bound, bound)
            torch.exp(log_u[steps], out=u[t])
            torch.mv(kernel.T, u[t], out=ktu[t])
            torch.sub(b_term, ktu[t].clamp_min(tiny).log(), alpha=fi, out=log_v[steps]).clamp_(-bound, bound)
            if tol is not None and steps % check_every == 0:
                error = (
                    _pot_error(alpha + log_u[t], alpha + log_u[steps])
                    + _pot_error(beta + log_v[t], beta + log_v[steps])
                ) / 2
                drift = torch.cat([log_u[steps], log_v[steps]]).abs().max()
                error, drift = torch.stack([error, drift]).tolist()  # the one host synchronisation
                if not drift < bound / 2 or error < tol:
                    stop = "drifted" if not drift < bound / 2 else "converged"
                    break
        # d log u_t / d kv_t and d log v_t / d ktu_t; a clamped entry passes no gradient
        live_u, live_v = log_u[1 : steps + 1].abs() < bound, log_v[1 : steps + 1].abs() < bound
        kv_slope = torch.where(live_u & (kv[:steps] > tiny), -fi / kv[:steps], 0)
        ktu_slope = torch.where(live_v & (ktu[:steps] > tiny), -fi / ktu[:steps], 0)
        ctx.save_for_backward(kernel, v[:steps], u[:steps], kv_slope, ktu_slope, live_u, live_v)
        return log_u[steps].clone(), log_v[steps].clone(), steps, stop

    @staticmethod
    def backward(ctx, grad_log_u, grad_log_v, *_):
        kernel, v, u, kv_slope, ktu_slope, live_u, live_v = ctx.saved_tensors
        # row t: gradients with respect to the vectors of iteration t
        grad_u, grad_v = torch.empty_like(u), torch.empty_like(v)
        grad_kv, grad_ktu = torch.empty_like(kv_slope), torch.empty_like(ktu_slope)
        last = len(v) - 1
        grad_v[last] = grad_log_v * live_v[last]
        for t in reversed(range(len(v))):
            torch.mul(grad_v[t], ktu_slope[t], out=grad_ktu[t])
            torch.mul(u[t] * live_u[t], kernel @ grad_ktu[t], out=grad_u[t])
            if t == last:
                grad_u[t] += grad_log_u * live_u[t]
            torch.mul(grad_u[t], kv_slope[t], out=grad_kv[t])
            if t:
                torch.mul(v[t] * live_v[t - 1], kernel.T @ grad_kv[t], out=grad_v[t - 1])
        grad_kernel = torch.cat([grad_kv, u]).T @ torch.cat([v, grad_ktu])
        return grad_kernel, grad_u.sum(0), grad_v.sum(0), None, None, None, None


def _log_scaling_bound(dtype):
    """B: log scalings stay within +-B, so that u K v cannot overflow (40 in float32)."""
    return math.log(torch.finfo(dtype).max) / 2 - 4


def _pot_error(log_previous, log_current):
    """POT's max|x - x'| / max(|x|, |x'|, 1) for x = exp(log_current), x' = exp(log_previous), without overflow."""
    top = torch.cat([log_previous, log_current]).max().clamp_min(0)
    return ((log_current - top).exp() - (log_previous - top).exp()).abs().max()


@full_precision
def transport_plan(image_embeds, text_embeds, caption_image_index, reg, reg_m, **sinkhorn_options):
    """T = N P*, P* = `unbalanced_sinkhorn(C, reg, reg_m, **sinkhorn_options)` of the cosine cost C_ij = 1 - x_i . y_j
    between caption rows (rows: each caption's image, columns: the captions), a = b = 1/N.

    Args:
        image_embeds: (B, d) per unique image. text_embeds: (N, d). caption_image_index: (N,) long.
    Returns:
        The (N, N) plan T; `(T, converged)` with `return_converged=True`.
    """
    cost = 1 - caption_row_logits(image_embeds, text_embeds, caption_image_index, 1.0)
    result = unbalanced_sinkhorn(cost, reg, reg_m, **sinkhorn_options)
    if sinkhorn_options.get("return_converged"):
        return cost.shape[0] * result[0], result[1]
    return cost.shape[0] * result
