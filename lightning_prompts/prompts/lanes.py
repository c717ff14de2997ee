"""MULTI-LANE's task lanes (De Min et al., CoLLAs 2024 / PMLR 274, multi-label class-incremental learning;
official code tdemin16/multi-lane, ``multi_lane/blocks.py``).

A lane is a handful of tokens per task — its class token (a copy of the ViT's) and ``S`` *selectors* — that run
beside the frozen ViT through every block with the block's own frozen weights and never write into the frozen
stream. In block ``i``, on LayerNorm'd tokens:

1. **drop and replace**: each selector ``s`` summarises the frozen stream's (normalised, detached) tokens ``X``,
   class token and patches: ``softmax(s Xᵀ / √d) X``; the lane attends over ``[cls, summaries]``;
2. **prefix prompts** (the first ``prompt_blocks`` blocks): the lane's keys and values are prefixed by the
   lane's own ``K`` key and ``K`` value prompts per head;
3. after the attention the summaries are *dropped*: the lane keeps its class token's output and its
   selectors (the block's residual adds the normalised selectors to the selectors, as the official block does),
   then the block's MLP residual runs on all lane tokens.

Training runs only the current task's lane; evaluation runs every seen task's lane (batched as a leading lane
dimension). At a task boundary lane ``t`` starts from lane ``t − 1``'s selectors and prompts.

:func:`lane_block_step` is one block's step (pinned in ``tests/methods/test_multi_lane.py`` to a transcription of
``PreT_Attention.forward`` and ``Block.forward``); :class:`TaskLanes` holds the parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskLanes(nn.Module):
    """Selectors ``(T, S, W)`` and key/value prompts ``(2, T, K, H, W/H)`` for the first ``prompt_blocks`` blocks,
    both initialised orthogonally (the official default ``prompt_init: orthogonal``).

    Args:
        num_tasks: ``T``, lanes (one per task).
        width, num_heads, depth: the ViT's.
        num_selectors: ``S`` (10).
        num_prompts: ``K`` prompts per head for keys and for values (10).
        prompt_blocks: blocks ``0 .. prompt_blocks − 1`` get prompts (5).
        init: ``"orthogonal"`` or ``"uniform"`` (in [−1, 1]).
    """

    def __init__(
        self,
        num_tasks: int,
        width: int,
        num_heads: int,
        depth: int,
        num_selectors: int = 10,
        num_prompts: int = 10,
        prompt_blocks: int = 5,
        init: str = "orthogonal",
    ) -> None:
        super().__init__()
        if init not in ("orthogonal", "uniform"):
            raise ValueError(f"init must be 'orthogonal' or 'uniform', got {init!r}.")
        if not 0 <= prompt_blocks <= depth:
            raise ValueError(f"prompt_blocks must be in 0..{depth}, got {prompt_blocks}.")
        # the official order: the selectors first (ViT.init), then each prompted block's prompts (Block.init)
        self.selectors = nn.Parameter(self._initial((num_tasks, num_selectors, width), init))
        self.prompts = nn.ParameterList(
            nn.Parameter(self._initial((2, num_tasks, num_prompts, num_heads, width // num_heads), init))
            for _ in range(prompt_blocks)
        )

    @staticmethod
    def _initial(shape: tuple[int, ...], init: str) -> Tensor:
        values = torch.randn(shape)
        return nn.init.orthogonal_(values) if init == "orthogonal" else nn.init.uniform_(values, -1, 1)

    @property
    def num_tasks(self) -> int:
        return int(self.selectors.shape[0])

    @torch.no_grad()
    def start_task(self, task: int) -> None:
        """Lane ``task`` starts from lane ``task − 1`` (official ``next_task``)."""
        if task < 1:
            return
        self.selectors[task] = self.selectors[task - 1]
        for prompts in self.prompts:
            prompts[:, task] = prompts[:, task - 1]

    def lane_slice(self, lanes: slice) -> tuple[Tensor, list[Tensor]]:
        """The selectors ``(L, S, W)`` and per-block prompts ``(2, L, K, H, W/H)`` of the lanes in ``lanes``."""
        return self.selectors[lanes], [prompts[:, lanes] for prompts in self.prompts]


def lane_block_step(
    block: nn.Module, x: Tensor, lanes: Tensor, prompts: Tensor | None, summarise: bool = True, drop: bool = True
) -> Tensor:
    """One timm block's step of the lanes ``(L, B, 1 + S, W)`` beside the frozen tokens ``x`` ``(B, N, W)``
    entering that block (see the module docstring); ``prompts`` ``(2, L, K, H, W/H)`` or ``None``.

    ``summarise``: the lane attends over ``[cls, summaries]`` (else over its own tokens); ``drop``: the
    summaries' outputs are dropped for the selectors. Drop and replace is both; the official
    ``--disable_dandr`` summarises in block 0 only and never drops (block 0's summaries become the lane's tokens).
    """
    attention = block.attn
    heads, width = attention.num_heads, x.shape[-1]
    frozen = block.norm1(x).detach()
    normed = block.norm1(lanes.to(block.norm1.weight.dtype))  # a 16-bit backbone's norms take its dtype (CPU)
    cls, selectors = normed[:, :, :1], normed[:, :, 1:]
    if summarise:
        weights = (torch.einsum("lbsc,bnc->lbsn", selectors, frozen) * width**-0.5).softmax(dim=-1)
        queries = torch.cat([cls, torch.einsum("bnc,lbsn->lbsc", frozen, weights)], dim=2)
    else:
        queries = normed
    count, batch, length, _ = queries.shape
    qkv = attention.qkv(queries).reshape(count, batch, length, 3, heads, width // heads).permute(3, 0, 1, 4, 2, 5)
    q, k, v = qkv.unbind(0)  # (L, B, H, length, W/H)
    q, k = attention.q_norm(q), attention.k_norm(k)
    if prompts is not None:  # (2, L, K, H, W/H) -> (L, B, H, K, W/H) for keys and values
        expanded = prompts.unsqueeze(2).expand(-1, -1, batch, -1, -1, -1).permute(0, 1, 2, 4, 3, 5)
        k, v = torch.cat([expanded[0], k], dim=-2), torch.cat([expanded[1], v], dim=-2)
    attended = ((q @ k.transpose(-2, -1)) * attention.scale).softmax(dim=-1)
    out = attention.proj((attended @ v).transpose(2, 3).reshape(count, batch, length, width))
    if summarise and drop:
        out = torch.cat([out[:, :, :1], selectors], dim=2)  # drop the summaries, keep the selectors
    lanes = lanes + block.drop_path1(block.ls1(out))
    return lanes + block.drop_path2(block.ls2(block.mlp(block.norm2(lanes.to(block.norm2.weight.dtype)))))
