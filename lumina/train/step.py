"""How one optimizer step runs: `PlainStep` (DeepSpeed engine, gradient accumulation in a loop)
or `PipeStep` (DeepSpeed's pipeline engine, 1F1B). The trainer holds one of them and never
branches on the layout itself; both return the mean LM loss over data parallel, or None when a
non-finite loss made every rank skip the update.

Where the optimizer does not compute the gradient norm correctly (ZeRO-0, see
lumina/train/gradnorm.py), the step computes it with `global_grad_norm` after the data-parallel
reduction and clips by it.
"""

from __future__ import annotations

import torch

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

    def _zero_loss(self) -> torch.Tensor:
        """A loss whose gradient is exactly zero for every parameter: keeps DeepSpeed's
        accumulation and gradient hooks in step when a micro-batch is skipped."""
        return sum(p.sum() for p in self.t.engine.module.parameters()) * 0.0

    def train(self, poison: bool) -> float | None:
        t, engine = self.t, self.t.engine
        lm_losses, skipped, self.grad_norm = [], False, None
        for _ in range(t.res.grad_accum):
            batch = t.train_loader.next_batch().to(t.device)  # consumed even when skipped
            if skipped:
                self._backward(self._zero_loss())
                engine.step()
                continue
            out = engine(batch[:, :-1], labels=batch[:, 1:])
            loss = out.loss + out.aux_loss
            if poison:
                loss = loss * float("nan")
            if distributed.any_rank(not bool(torch.isfinite(loss)), t.device):
                skipped = True
                t.optimizer.skip_next = True  # consumed by the step at the accumulation boundary
                self._backward(self._zero_loss())
            else:
                self._backward(loss)
                lm_losses.append(float(out.loss.detach()))
            if engine.is_gradient_accumulation_boundary():
                self.grad_norm = self._norm()
            engine.step()
        if skipped:
            return None
        return distributed.all_reduce_mean([sum(lm_losses) / len(lm_losses)], t.device)[0]

    @torch.no_grad()
    def evaluate(self, eval_iters: int) -> float:
        t = self.t
        t.model.eval()
        total = 0.0
        for _ in range(eval_iters):
            batch = t.valid_loader.next_batch().to(t.device)
            total += float(t.model(batch[:, :-1], labels=batch[:, 1:]).loss)
        t.model.train()
        return distributed.all_reduce_mean([total / eval_iters], t.device)[0]

    def routing_stats(self) -> dict:
        return self.t.model.routing_stats()


class PipeStep(_Step):
    """The pipeline module computes the loss on the last stage (`lm_loss`); a non-finite one is
    recorded and every rank decides to skip inside the optimizer step, after the gradients are
    reduced (the optimizer's `decide_skip` hook, which every rank reaches)."""

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
        self.nonfinite |= not bool(torch.isfinite(loss))
        return loss

    def _before_step(self) -> bool:
        if distributed.any_rank(self.nonfinite, self.t.device):
            return True
        self.grad_norm = self._norm(pipe_group=self.t.model._grid.get_pipe_parallel_group())
        return False

    def _lm_loss(self) -> float:
        """Mean LM loss of the last stages' micro-batches, on every rank."""
        import torch.distributed as dist

        local = self.t.model.lm_losses  # TP ranks of a last stage hold equal losses: the mean is unchanged
        t = torch.tensor([float(sum(local)) if local else 0.0, float(len(local))], dtype=torch.float64,
                         device=self.t.device)
        dist.all_reduce(t)
        self.t.model.lm_losses.clear()
        return float(t[0] / t[1])

    def train(self, poison: bool) -> float | None:
        t = self.t
        self.grad_norm, self.nonfinite = None, False
        t.model.lm_losses.clear()
        t.model.poison_next = poison
        t.engine.train_batch(iter(self._batches(t.train_loader, t.res.grad_accum)))
        if t.optimizer.skipped_last:
            return None
        return self._lm_loss()

    @torch.no_grad()
    def evaluate(self, eval_iters: int) -> float:
        t = self.t
        t.model.lm_losses.clear()
        t.engine.eval_batch(iter(self._batches(t.valid_loader, eval_iters)), num_micro_batches=eval_iters)
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
