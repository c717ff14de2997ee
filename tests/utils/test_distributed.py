"""``gather_rows`` under DDP (gloo, two forked processes): shares of unequal length, and a gradient that makes DDP's
average the one-process gradient of the global batch."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_prompts.utils.distributed import gather_rows, global_batch_mean

INPUTS = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
SHARES = [slice(0, 4), slice(4, 7)]  # unequal: 4 rows on the first process, 3 on the second


def pairwise_loss_terms(own: torch.Tensor, every: torch.Tensor, start: int) -> torch.Tensor:
    """Each own row's log-sum-exp against every row, minus its score with itself: it reads every process's rows."""
    scores = own @ every.t()
    return torch.logsumexp(scores, dim=1) - scores.diagonal(start)


class Gathering(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.layer = torch.nn.Linear(3, 4)

    def training_step(self, batch, batch_idx):
        share = SHARES[self.global_rank] if self.trainer.world_size > 1 else slice(0, 7)
        own = self.layer(INPUTS[share])
        every, start = gather_rows(own)
        assert every.shape[0] == 7 and start == share.start
        terms = pairwise_loss_terms(own, every, start)
        return global_batch_mean(terms.sum(), terms.shape[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return DataLoader(range(2), batch_size=1)  # one step per process; the rows come from INPUTS


def train(processes: int, root) -> torch.Tensor:
    module = Gathering()
    Trainer(strategy="ddp_fork" if processes > 1 else "auto", devices=processes, accelerator="cpu", max_steps=1,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(root)).fit(module)  # fmt: skip
    return module.layer.weight.detach().clone()


def test_gathered_rows_of_unequal_shares_give_ddp_the_global_batchs_gradient(tmp_path):
    one, two = train(1, tmp_path / "one"), train(2, tmp_path / "two")
    initial = Gathering().layer.weight.detach()
    assert (one - initial).abs().max() > 1e-2  # the step moved the weights
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)


def test_one_process_returns_its_rows_unchanged():
    rows = torch.randn(3, 2)
    gathered, start = gather_rows(rows)
    assert gathered is rows and start == 0
