"""How one optimizer step runs: `PlainStep` (DeepSpeed engine, gradient accumulation in a loop)
or `PipeStep` (DeepSpeed's pipeline engine, 1F1B). The trainer holds one of them and never
branches on the layout itself; both return the mean LM loss over data parallel, or None when the
step was skipped.

A step is skipped when any rank saw a non-finite loss or the global gradient norm is not finite
(a finite loss can come with an inf gradient). The decision is taken once per step, at the
accumulation boundary, on every rank alike: the loss flag rides on the one all-reduce that also
averages the loss, and the norm is global already (Lumina's, or DeepSpeed's optimizer's, which
then skips the update itself). No micro-batch waits on the host or on other ranks.

Where the optimizer does not compute the gradient norm correctly (ZeRO-0, see
lumina/train/gradnorm.py), the step computes it with `global_grad_norm` after the data-parallel
reduction and clips by it.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lumina.train import distributed
from lumina.train.gradnorm import global_grad_norm


class _Step:
    def __init__(self, trainer, clip: float | None, own_norm: bool):
        self.t = trainer
        self.clip = clip
        self.own_norm = own_norm
        """Whether Lumina computes the norm (and clips by `clip`): ZeRO-0 outside DeepSpeed's BF16 optimizer."""
        self.grad_norm: float | None = None

    def _norm(self, pipe_group=None) -> float | None:
        if not self.own_norm:
            return None
        w = self.t.wiring
        return global_grad_norm(self.t.engine.module, self.t.device, tp_group=w.tp_group,
                                ep_group=w.ep.group if w.ep is not None else None,
                                pipe_group=pipe_group, clip=self.clip)

    def _finish(self, decided_skip: bool) -> bool:
        """Whether the step just taken was skipped: by Lumina's decision, or by DeepSpeed's
        optimizer on a non-finite norm (it then never calls the inner optimizer)."""
        norm = self.logged_grad_norm()
        return decided_skip or self.t.optimizer.skipped_last or (norm is not None and not math.isfinite(norm))

    def logged_grad_norm(self) -> float | None:
        """Lumina's norm where it computes one, else the optimizer's."""
        if self.grad_norm is not None:
            return self.grad_norm
        norm = self.t.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None


def _forget_state_init_step(optimizer) -> None:
    """DeepSpeed's FP16_UnfusedOptimizer (bf16 at ZeRO-0 without pipeline) builds the Adam state
    by stepping once on zero gradients. That step counts: Adam's bias correction then shrinks the
    first real updates (by a quarter at the first, less after), which trains like a lower learning
    rate, and AdamW's decay has shrunk the fp32 master weights once. Undo it: empty the state and
    copy the masters back from the bf16 weights they were cloned from. Runs before a checkpoint
    is loaded (the Trainer builds its step first), so it never drops restored state."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    optimizer.optimizer.state.clear()
    with torch.no_grad():
        for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups):
            torch._foreach_copy_(high, low)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose step must still be
    skipped (what a huge learning rate did to a MoE run)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class PlainStep(_Step):
    def __init__(self, trainer, clip: float | None, own_norm: bool):
        super().__init__(trainer, clip, own_norm)
        from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

        # DeepSpeed runs its optimizer's backward prologue from hooks it puts on the tensors the
        # model returns, and finds none in an LMOutput. The BF16 optimizer's prologue empties the
        # bf16 gradients it has already added to its fp32 accumulator; skipped, every micro-batch's
        # gradient is added again at each later one (micro-batch k of n weighted n - k + 1).
        self._clear_bf16_grads = isinstance(trainer.engine.optimizer, BF16_Optimizer)
        _forget_state_init_step(trainer.engine.optimizer)

    def _backward(self, loss: torch.Tensor) -> None:
        if self._clear_bf16_grads:
            self.t.engine.optimizer.clear_lp_grads()
        self.t.engine.backward(loss)

    def train(self, poison: str | None) -> float | None:
        """poison (test hook): "loss" makes every micro-batch's loss NaN, "grad" its gradient inf."""
        t, engine = self.t, self.t.engine
        self.grad_norm = None
        t.optimizer.skip_next = t.optimizer.skipped_last = False
        # [non-finite flag, LM loss sum] of this rank's micro-batches, kept on the device: read
        # once, in the step's one all-reduce.
        acc = torch.zeros(2, dtype=torch.float64, device=t.device)
        skip = False
        for _ in range(t.res.grad_accum):
            batch = t.train_loader.next_batch().to(t.device)
            out = engine(batch[:, :-1], labels=batch[:, 1:])
            loss = out.loss + out.aux_loss
            if poison == "loss":
                loss = loss * float("nan")
            elif poison == "grad":
                loss = _InfiniteGradient.apply(loss)
            acc[0] += (~torch.isfinite(loss.detach())).double()
            acc[1] += out.loss.detach().double()
            self._backward(loss)
            if engine.is_gradient_accumulation_boundary():
                self.grad_norm = self._norm()
                dist.all_reduce(acc)
                skip = bool(acc[0] > 0) or (self.grad_norm is not None and not math.isfinite(self.grad_norm))
                t.optimizer.skip_next = skip
            engine.step()
        if self._finish(skip):
            return None
        return float(acc[1]) / (t.res.grad_accum * dist.get_world_size())

    @torch.no_grad()
    def evaluate(self, micro_batches: int) -> float:
        """Token-weighted mean LM loss over `micro_batches` of this rank and those of every other
        DP rank: one sum of loss x tokens and one of tokens over all ranks, so the mean is over
        the whole held-out set however it is split (TP peers add the same pair: the ratio holds)."""
        t = self.t
        t.model.eval()
        acc = torch.zeros(2, dtype=torch.float64, device=t.device)  # [sum of loss x tokens, tokens]
        for _ in range(micro_batches):
            batch = t.valid_loader.next_batch().to(t.device)
            labels = batch[:, 1:]
            acc[0] += t.model(batch[:, :-1], labels=labels).loss.detach().double() * labels.numel()
            acc[1] += labels.numel()
        t.model.train()
        dist.all_reduce(acc)
        return float(acc[0] / acc[1])

    def routing_stats(self) -> dict:
        return self.t.model.routing_stats()


class PipeStep(_Step):
    """The pipeline module computes the loss on the last stage (`lm_loss`); a non-finite one is
    recorded and every rank decides to skip inside the optimizer step, after the gradients are
    reduced (the optimizer's `decide_skip` hook, which every rank reaches), together with a
    non-finite gradient norm. DeepSpeed's own optimizers (ZeRO-1, BF16_Optimizer) skip a
    non-finite norm before the hook; `_finish` counts that too."""

    def __init__(self, trainer, clip: float | None, own_norm: bool):
        super().__init__(trainer, clip, own_norm)
        self.nonfinite = False
        trainer.optimizer.decide_skip = self._before_step
        trainer.model.loss_fn = self._loss

    def _batches(self, loader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` micro-batches as (inputs, labels). Every stage reads them (only the first and
        last use them) so all ranks' loader states stay in step for checkpoints."""
        out = []
        for _ in range(count):
            batch = loader.next_batch().to(self.t.device)
            out.append((batch[:, :-1], batch[:, 1:]))
        return out

    def _loss(self, outputs, labels) -> torch.Tensor:
        loss = self.t.model.lm_loss(outputs, labels)
        self.nonfinite = self.nonfinite | ~torch.isfinite(loss.detach())  # on the device: no sync here
        return loss

    def _before_step(self) -> bool:
        if distributed.any_rank(bool(self.nonfinite), self.t.device):
            self.decided_skip = True
            return True
        self.grad_norm = self._norm(pipe_group=self.t.model._grid.get_pipe_parallel_group())
        self.decided_skip = self.grad_norm is not None and not math.isfinite(self.grad_norm)
        return self.decided_skip

    def _lm_loss(self) -> float:
        """Mean LM loss of the last stages' micro-batches, on every rank."""
        import torch.distributed as dist

        local = self.t.model.lm_losses  # TP ranks of a last stage hold equal losses: the mean is unchanged
        t = torch.tensor([float(sum(local)) if local else 0.0, float(len(local))], dtype=torch.float64,
                         device=self.t.device)
        dist.all_reduce(t)
        self.t.model.lm_losses.clear()
        return float(t[0] / t[1])

    def train(self, poison: str | None) -> float | None:
        t = self.t
        self.grad_norm, self.nonfinite, self.decided_skip = None, False, False
        t.optimizer.skip_next = t.optimizer.skipped_last = False
        t.model.lm_losses.clear()
        t.model.poison_next = poison == "loss"
        t.engine.train_batch(iter(self._batches(t.train_loader, t.res.grad_accum)))
        loss = self._lm_loss()  # collective: every rank, skipped or not
        return None if self._finish(self.decided_skip) else loss

    @torch.no_grad()
    def evaluate(self, micro_batches: int) -> float:
        """The mean of the last stages' micro-batch losses over every rank: each micro-batch holds
        micro_batch x seq tokens (fixed windows, no padding), so this is the token-weighted mean."""
        t = self.t
        t.model.lm_losses.clear()
        t.engine.eval_batch(iter(self._batches(t.valid_loader, micro_batches)), num_micro_batches=micro_batches)
        t.model.train()
        return self._lm_loss()

    def routing_stats(self) -> dict:
        import torch.distributed as dist

        from lumina.model.transformer import summarize_routing

        c = self.t.layout.coords(dist.get_rank())
        gathered: list = [None] * dist.get_world_size()  # each stage knows its own layers
        mine = self.t.model.routing_layers() if c.dp == 0 and c.tp == 0 else []
        dist.all_gather_object(gathered, mine)
        return summarize_routing([layer for stage in gathered for layer in stage])
