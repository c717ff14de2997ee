"""What a loss or a data module needs to know about the processes of a DDP run."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor


def process_count_and_rank() -> tuple[int, int]:
    """The number of processes of the run and this one's rank; ``(1, 0)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def global_batch_mean(total: Tensor, count: Tensor | int) -> Tensor:
    """``total / count`` (0 when ``count`` is 0), where ``total`` sums this process's share of a mean over the
    global batch. DDP averages the gradients of its ``W`` processes, which averages per-process means: right
    when every process averages the same number of terms, wrong for a mean over the labelled entries of a
    masked loss, or over one part of a batch (process shares hold 6 and 7 labels, or no pseudolabelled image at
    all). While gradients are on, each process divides by ``(Σ counts) / W`` instead, so the averaged gradient
    is the one-process gradient of the global batch. A collective call: in training every process makes it,
    for every such mean, even over an empty part. Under ``no_grad`` (evaluation, whose shares differ in
    length) the process's own mean."""
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device)
    processes, _ = process_count_and_rank()
    if processes > 1 and torch.is_grad_enabled():
        count = count.detach().clone()
        dist.all_reduce(count)
        return total * processes / count.clamp(min=1)
    return total / count.clamp(min=1)


class _GatherRows(torch.autograd.Function):
    """Every process's rows in rank order, given each process's row count; backward sums the gradient of the
    gathered rows over the processes (each process's loss reads every process's rows) and returns this process's
    slice."""

    @staticmethod
    def forward(ctx: Any, rows: Tensor, sizes: list[int], start: int) -> Tensor:  # type: ignore[override]
        # all_gather takes tensors of one shape: shares that differ (an evaluation set that does not split evenly)
        # are padded to the largest and cut back after
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded)
        ctx.start, ctx.count = start, rows.shape[0]
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.count], None, None


def gather_rows(rows: Tensor) -> tuple[Tensor, int]:
    """Under DDP, the rows of every process's ``rows`` (first dimension; shares may differ in length) in rank order,
    and where this process's own rows start among them; ``(rows, 0)`` in one process. Differentiable: a loss that
    reads every process's rows (in-batch negatives from the global batch) sends each process the gradient of every
    process's loss with respect to its rows, so DDP's average of the parameter gradients is the one-process
    gradient of the global batch when each process's loss is its share of the global mean
    (:func:`global_batch_mean`). A collective call."""
    processes, rank = process_count_and_rank()
    if processes == 1:
        return rows, 0
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(processes)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    start = sum(sizes[:rank])
    return _GatherRows.apply(rows.contiguous(), sizes, start), start


def share_batchnorm_statistics(module: torch.nn.Module) -> None:
    """Under DDP, give every process the first process's BatchNorm running statistics (the ones its checkpoint
    keeps) before an evaluation. DDP copies them from the first process only at the start of each training
    forward pass, and each process then updates its own from its share of the batch: after the last step they
    differed (0.07 on IDPT's head), and each process scored its share of the validation set with other
    statistics. A collective call; nothing in one process."""
    processes, _ = process_count_and_rank()
    if processes == 1:
        return
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
            for buffer in (layer.running_mean, layer.running_var, layer.num_batches_tracked):
                dist.broadcast(buffer, src=0)


def allow_parameters_without_gradient(trainer: Any, who: str) -> None:
    """Let a DDP run of ``who`` have trainable parameters that some steps leave without a gradient (LAE's heads of
    later tasks, a heterogeneous GNN's last-layer convolutions into node types the loss never reads): DDP waits for
    every parameter's gradient and stops the first step otherwise, asking for ``find_unused_parameters``. Set here,
    before the strategy wraps the module, unless the run's strategy chose a value itself (e.g.
    ``ddp_find_unused_parameters_false``). Nothing outside DDP."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DDPStrategy):
        return
    options = strategy._ddp_kwargs  # the keyword arguments DDPStrategy passes to DistributedDataParallel
    if "find_unused_parameters" not in options:
        options["find_unused_parameters"] = True
        rank_zero_info(f"{who}: DDP runs with find_unused_parameters=True (some parameters get no gradient in a step).")
