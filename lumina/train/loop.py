"""The training job: DeepSpeed engine, data, loop, eval, metrics, checkpoints and signals."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time

import torch

from lumina.accounting import account
from lumina.config import ModelConfig
from lumina.model import LayerFactory, LuminaLM
from lumina.train import checkpoint, distributed
from lumina.train.args import Resolved, resolve
from lumina.parallel.dry_run import dry_run
from lumina.parallel.layout import ParallelLayout, dry_run_world_size, layout_from_args
from lumina.train.dsconfig import bf16_enabled, zero_stage_of
from lumina.train.dsconfig import build as build_ds_config
from lumina.train.hardware import describe_device, peak_memory_bytes, peak_tflops
from lumina.train.metrics import MetricsLogger, summary_table, write_summary
from lumina.train.optim import lr_at, make_optimizer, param_groups

EXIT_NONFINITE = 3


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """Round the embedding up, as Megatron does, so the vocab splits evenly and GEMMs align."""
    return int(math.ceil(vocab_size / multiple) * multiple)


class _StopFlag:
    """SIGTERM / SIGUSR1 (what SLURM sends before a kill or preemption) ask for save-and-exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signum


def _data(args: argparse.Namespace, seq: int, mbs: int, rank: int, dp: int, tokenizer):
    from lumina.data import BatchLoader, embedded_corpus_shards, parse_data_path

    # The embedded corpus is prepared (and its shards checked) only when no --data-path is given.
    if args.data_path is None:
        embedded_train, embedded_valid = embedded_corpus_shards()
        train_prefixes, train_weights = [embedded_train], None
        valid_prefixes, valid_weights = [embedded_valid], None
    else:
        train_prefixes, train_weights = parse_data_path(args.data_path)
        valid_prefixes, valid_weights = None, None
    if args.valid_data_path is not None:
        valid_prefixes, valid_weights = parse_data_path(args.valid_data_path)
    common = dict(seq_length=seq, micro_batch_size=mbs, dp_rank=rank, dp_size=dp, seed=args.seed,
                  tokenizer_sha256=tokenizer.sha256, vocab_size=tokenizer.vocab_size)
    if valid_prefixes is None:  # no validation set given: hold out the last documents of the data
        train = BatchLoader(train_prefixes, train_weights, split="train", valid_fraction=0.05, **common)
        valid = BatchLoader(train_prefixes, train_weights, split="valid", valid_fraction=0.05, **common)
    else:
        train = BatchLoader(train_prefixes, train_weights, **common)
        valid = BatchLoader(valid_prefixes, valid_weights, **common)
    return train, valid


def plan_layout(args: argparse.Namespace) -> tuple[Resolved, ModelConfig, dict, ParallelLayout, object]:
    """Everything decided before any process group exists: flags, model, DeepSpeed JSON, layout."""
    from lumina.data import load_tokenizer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    world = dry_run_world_size(args, world) or world
    res = resolve(args, world)
    tokenizer = load_tokenizer(args.tokenizer_model)
    cfg = res.model.replace(vocab_size=padded_vocab(tokenizer.vocab_size))
    ds_config = build_ds_config(res, args.ds_config, args.zero_stage, args.bf16, args.clip_grad,
                                on_cpu=not torch.cuda.is_available())
    layout = layout_from_args(args, world, cfg, zero_stage_of(ds_config))
    return res, cfg, ds_config, layout, tokenizer


class Trainer:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # First: SLURM may signal (preemption, time limit) while the ranks are still starting up.
        self.stop = _StopFlag()
        distributed.ensure_env()
        res, self.cfg, self.ds_config, self.layout, self.tokenizer = plan_layout(args)
        if args.sequence_parallel:
            raise ValueError("--sequence-parallel is not supported: megatron-core's sequence-parallel "
                             "layers allocate their all-gather buffer on CUDA (GlobalMemoryBuffer, which fails "
                             "on CPU), and Lumina's norms, routers and MoD would need their gradients reduced "
                             "over the TP group, which it does not do yet. Drop the flag; "
                             "--recompute-activations saves activation memory instead")
        if self.layout.pp > 1 and (self.layout.tp > 1 or self.layout.ep > 1):
            raise ValueError(f"--pipeline-model-parallel-size {self.layout.pp} with tensor or expert parallel "
                             "(here TP {}, EP {}) is validated and shown by --dry-run, but the trainer does not "
                             "run that combination yet (docs/parallelism.md, Status): use pipeline with data "
                             "parallel, or tensor/expert parallel without pipeline".format(self.layout.tp, self.layout.ep))
        self.res = res
        self.seq = self.cfg.seq_length
        self.resume = None
        if args.load is not None:  # refuse a wrong checkpoint before any process group exists
            tag, meta = checkpoint.latest(args.load)
            checkpoint.check_compatible(meta, self.cfg, res.world_size, args.load)
            self.resume = (tag, meta)
        self.run_dir = args.run_dir or os.path.join("runs", f"{self.cfg.name}_{self.cfg.mode}")
        self.save_dir = args.save or os.path.join(self.run_dir, "checkpoints")

        self.device = distributed.device()
        distributed.init(self.device)
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.dp_rank = self.layout.coords(self.rank).dp  # TP peers read the same data
        self.train_loader, self.valid_loader = _data(args, self.seq, res.micro_batch_size, self.dp_rank,
                                                     res.dp_size, self.tokenizer)
        layers, mpu, ep = LayerFactory(), None, None
        if self.layout.tp > 1 or self.layout.ep > 1:
            from lumina.parallel import groups

            groups.initialize(self.layout)
            if self.layout.tp > 1:
                from lumina.parallel.tensor import MegatronTPLayers

                layers, mpu = MegatronTPLayers(groups.tp_group()), groups.DeepSpeedMPU()
        if self.layout.ep > 1:
            from lumina.parallel.expert import create_groups

            ep = layers.expert_parallel = create_groups(self.layout, mpu)
        self.tp_group = getattr(layers, "group", None)
        self.ep = ep
        torch.manual_seed(args.seed)
        self.pipe, self._pipe_nonfinite = self.layout.pp > 1, False
        if self.pipe:
            from lumina.parallel import pipeline

            model = pipeline.build(self.cfg, self.layout, args.seed, args.recompute_activations)
        else:
            model = LuminaLM(self.cfg, layers, init_seed=args.seed)  # same weights under any layout
            model.set_activation_checkpointing(args.recompute_activations)
        zero = self.ds_config.get("zero_optimization", {})
        offload = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
        groups_ = param_groups(model, args.weight_decay, ep.group_name if ep else "experts")
        self.optimizer = make_optimizer(groups_, args.lr, (args.adam_beta1, args.adam_beta2), args.adam_eps, offload)
        # At ZeRO-0 in FP32 Lumina computes the true global gradient norm itself (_unsharded_grad_norm,
        # for the log) and clips by it: DeepSpeed's clipping there misjudges the norm under expert
        # parallel (it averages per-rank norms that each see only their own experts) and pipeline
        # parallel (it counts the tied embedding twice and non-TP weights only on stage 0), and
        # elsewhere would compute the same norm a second time every step.
        self.clip = None
        if zero.get("stage", 0) == 0 and not bf16_enabled(self.ds_config):
            self.clip = self.ds_config.get("gradient_clipping", 0.0) or None
            # 0, not absent: DeepSpeed 0.19's default for an absent gradient_clipping is 1.0.
            self.ds_config["gradient_clipping"] = 0.0
        import deepspeed

        ctx = contextlib.nullcontext()
        if ep is not None:
            from lumina.model.moe import MoE
            from lumina.parallel.expert import deepspeed_sees_lumina_moe

            ctx = deepspeed_sees_lumina_moe(MoE)
        with ctx:
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer,
                                                        config=self.ds_config, mpu=mpu)
        self.model: LuminaLM = self.engine.module  # a PipelineModule under pipeline parallel
        if res.world_size == 1 and zero.get("stage", 0) == 0:
            # One process has nothing to all-reduce, but DeepSpeed's ZeRO-0 backward still copies
            # every gradient into flat buckets and back (a full extra copy, each step).
            self.engine.enable_backward_allreduce = False
        if self.pipe:  # the skip decision needs the last stage's loss, so all ranks agree at the step
            self.optimizer.decide_skip = self._pipe_before_step
            self.model.loss_fn = self._pipe_loss
        self.bf16 = bf16_enabled(self.ds_config)
        self.iteration = 0
        if self.resume is not None:
            tag, meta = self.resume
            self.engine.load_checkpoint(args.load, tag=tag, load_lr_scheduler_states=False)
            state = checkpoint.load_rank_state(args.load, tag, self.rank)
            checkpoint.restore_expert_shards(self.engine.module, state)
            self.train_loader.load_state_dict(state["loader"])
            checkpoint.set_rng_state(state["rng"])
            self.iteration = meta["iteration"]
        self.acc = account(self.cfg, self.seq)
        self.peak, self.peak_source = peak_tflops(self.device, args.peak_tflops)
        self.log = MetricsLogger(self.run_dir, args.tensorboard_dir or os.path.join(self.run_dir, "tensorboard"),
                                 args.train_iters, self.iteration, enabled=self.rank == 0,
                                 progress=not args.no_progress)

    # -- one iteration ----------------------------------------------------------------------
    def _zero_loss(self) -> torch.Tensor:
        """A loss whose gradient is exactly zero for every parameter: keeps DeepSpeed's
        accumulation and gradient hooks in step when a micro-batch is skipped."""
        return sum(p.sum() for p in self.engine.module.parameters()) * 0.0

    def train_iteration(self) -> float | None:
        """Run one global batch. Returns the mean LM loss over DP, or None when a non-finite loss
        made every rank skip the update."""
        lr = lr_at(self.iteration, self.args.lr, self.args.min_lr, self.args.lr_warmup_iters, self.args.train_iters)
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        if self.pipe:
            return self._train_iteration_pipe()
        lm_losses, skipped, self.grad_norm = [], False, None
        for _ in range(self.res.grad_accum):
            batch = self.train_loader.next_batch().to(self.device)  # consumed even when skipped
            if skipped:
                self.engine.backward(self._zero_loss())
                self.engine.step()
                continue
            out = self.engine(batch[:, :-1], labels=batch[:, 1:])
            loss = out.loss + out.aux_loss
            if self.iteration + 1 in self.args.debug_nan_iters:
                loss = loss * float("nan")
            if distributed.any_rank(not bool(torch.isfinite(loss)), self.device):
                skipped = True
                self.optimizer.skip_next = True  # consumed by the step at the accumulation boundary
                self.engine.backward(self._zero_loss())
            else:
                self.engine.backward(loss)
                lm_losses.append(float(out.loss.detach()))
            if self.engine.is_gradient_accumulation_boundary():
                self.grad_norm = self._unsharded_grad_norm()
            self.engine.step()
        if skipped:
            return None
        return distributed.all_reduce_mean([sum(lm_losses) / len(lm_losses)], self.device)[0]

    def _batches(self, loader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` micro-batches as (inputs, labels). Every stage reads them (only the first and
        last use them) so all ranks' loader states stay in step for checkpoints."""
        out = []
        for _ in range(count):
            batch = loader.next_batch().to(self.device)
            out.append((batch[:, :-1], batch[:, 1:]))
        return out

    def _train_iteration_pipe(self) -> float | None:
        """One global batch through DeepSpeed's pipeline schedule (1F1B), optimizer step included."""
        self.grad_norm = None
        self.model.lm_losses.clear()
        self.model.poison_next = self.iteration + 1 in self.args.debug_nan_iters
        self._pipe_nonfinite = False
        batches = self._batches(self.train_loader, self.res.grad_accum)
        self.engine.train_batch(iter(batches))
        if self.optimizer.skipped_last:
            return None
        return self._pipe_lm_loss()

    def _pipe_loss(self, outputs, labels) -> torch.Tensor:
        """The last stage's loss; a non-finite one is recorded for the step's skip decision."""
        loss = self.model.lm_loss(outputs, labels)
        self._pipe_nonfinite |= not bool(torch.isfinite(loss))
        return loss

    def _pipe_before_step(self) -> bool:
        """Run by every rank inside the optimizer step, after the gradients are reduced: whether to
        skip (a non-finite loss on any last stage), else the gradient norm and Lumina's clipping."""
        if distributed.any_rank(self._pipe_nonfinite, self.device):
            return True
        self.grad_norm = self._unsharded_grad_norm()
        return False

    def _pipe_lm_loss(self) -> float:
        """Mean LM loss of the last stages' micro-batches, on every rank."""
        import torch.distributed as dist

        local = self.model.lm_losses
        t = torch.tensor([float(sum(local)) if local else 0.0, float(len(local))], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t)
        self.model.lm_losses.clear()
        return float(t[0] / t[1])

    def _unsharded_grad_norm(self) -> float | None:
        """Pre-clip global gradient norm when DeepSpeed does not track one (ZeRO-0, fp32): the
        gradients are already all-reduced at the boundary, so each rank's dense gradients are the
        global ones. Under expert parallel, clips by it (see `self.clip`)."""
        if self.engine.zero_optimization() or self.bf16:
            return None
        import torch.distributed as dist

        # [TP-sharded, replicated] squared sums; expert weights differ over the EP group too.
        # Per-tensor norms in one fused call each (no FP64 copy of every gradient), summed in FP64.
        grads: dict[tuple[bool, int], list[torch.Tensor]] = {}
        for p in self.engine.module.parameters():
            if p.grad is None:
                continue
            if getattr(p, "ds_pipe_replicated", False):  # the last stage's copy of a tied embedding
                continue
            key = (getattr(p, "allreduce", True) is False, 0 if getattr(p, "tensor_model_parallel", False) else 1)
            grads.setdefault(key, []).append(p.grad.detach())
        dense, experts = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        for (is_expert, slot), tensors in grads.items():
            norms = torch.stack(torch._foreach_norm(tensors)).double().cpu()
            (experts if is_expert else dense)[slot] += norms.pow(2).sum()
        if self.ep is not None:
            experts = experts.to(self.device)
            dist.all_reduce(experts, group=self.ep.group)
        dense = dense + experts.cpu()
        if self.pipe:  # each stage holds its own layers
            dense = dense.to(self.device)
            dist.all_reduce(dense, group=self.model._grid.get_pipe_parallel_group())
            dense = dense.cpu()
        sharded = dense[:1].to(self.device)
        if self.tp_group is not None:
            dist.all_reduce(sharded, group=self.tp_group)
        norm = float((sharded.cpu()[0] + dense[1]).sqrt())
        if self.clip is not None and norm > self.clip:
            coef = self.clip / (norm + 1e-6)  # DeepSpeed's and torch's clip_grad_norm_ formula
            for p in self.engine.module.parameters():
                if p.grad is not None:
                    p.grad.mul_(coef)
        return norm

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean held-out LM loss over --eval-iters micro-batches, the same batches every time."""
        if self.args.eval_iters == 0:
            return None
        state = self.valid_loader.state_dict()
        if self.pipe:
            batches = self._batches(self.valid_loader, self.args.eval_iters)
            self.model.lm_losses.clear()
            self.engine.eval_batch(iter(batches), num_micro_batches=self.args.eval_iters)
            self.valid_loader.load_state_dict(state)
            self.model.train()
            return self._pipe_lm_loss()
        self.model.eval()
        total = 0.0
        for _ in range(self.args.eval_iters):
            batch = self.valid_loader.next_batch().to(self.device)
            total += float(self.model(batch[:, :-1], labels=batch[:, 1:]).loss)
        self.valid_loader.load_state_dict(state)
        self.model.train()
        return distributed.all_reduce_mean([total / self.args.eval_iters], self.device)[0]

    # -- the job ----------------------------------------------------------------------------
    def save(self) -> str:
        return checkpoint.save(self.engine, self.save_dir, self.iteration, self.cfg,
                               self.train_loader.state_dict(), self.res.world_size, self.args.keep_last,
                               {"preset": self.cfg.name, "mode": self.cfg.mode,
                                "tokenizer_sha256": self.tokenizer.sha256})

    def run(self) -> int:
        args, res = self.args, self.res
        tokens_per_iter = res.global_batch_size * self.seq
        self.log.print(
            f"lumina: {self.cfg.name}/{self.cfg.mode}, {self.acc.params_total / 1e6:.2f}M params "
            f"({self.acc.params_active / 1e6:.2f}M active), {res.world_size} rank(s) on "
            f"{describe_device(self.device)}, global batch {res.global_batch_size} x {self.seq} tokens "
            f"(micro {res.micro_batch_size} x accumulation {res.grad_accum} x DP {res.dp_size}), "
            f"ZeRO {self.ds_config.get('zero_optimization', {}).get('stage', 0)}, "
            f"{'bf16' if self.bf16 else 'fp32'}; peak {self.peak:.3f} TFLOP/s ({self.peak_source}); "
            f"{self.train_loader.tokens_per_epoch:,} training tokens per epoch "
            f"({self.train_loader.tokens_per_epoch / tokens_per_iter:.0f} iterations)")
        start_iter, start_time = self.iteration, time.perf_counter()
        window_start, window_iters = time.perf_counter(), 0
        bad_in_row, last_loss, last_eval, stats = 0, None, None, {}
        while self.iteration < args.train_iters:
            loss = self.train_iteration()
            self.iteration += 1
            if loss is None:
                bad_in_row += 1
                self.log.log({"iteration": self.iteration, "split": "train", "skipped": True,
                              "reason": "non-finite loss", "nonfinite_in_row": bad_in_row})
                if bad_in_row >= args.max_nonfinite_iters:
                    self.log.print(
                        f"lumina: stopping: {bad_in_row} iterations in a row had a NaN/inf loss "
                        f"(--max-nonfinite-iters={args.max_nonfinite_iters}); the last good "
                        f"checkpoint in {self.save_dir} is kept. Lower --lr or check the data.")
                    self.log.close()
                    return EXIT_NONFINITE
            else:
                bad_in_row, last_loss = 0, loss
            window_iters += 1
            self.log.step(last_loss if last_loss is not None else float("nan"))
            if self.iteration % args.log_interval == 0 or self.iteration == args.train_iters:
                elapsed = time.perf_counter() - window_start
                if loss is not None:  # routing stats of the last forward: read (and synced) only here
                    stats = self._routing_stats()
                self.log.log(self._train_record(last_loss, stats, window_iters * tokens_per_iter / elapsed))
                window_start, window_iters = time.perf_counter(), 0
            if self.iteration % args.eval_interval == 0 or self.iteration == args.train_iters:
                last_eval = self.evaluate()
                if last_eval is not None:
                    self.log.log({"iteration": self.iteration, "split": "valid", "loss": last_eval,
                                  "ppl": math.exp(min(last_eval, 50.0))})
            stop = distributed.any_rank(self.stop.signal is not None, self.device)
            due = self.iteration % args.save_interval == 0 or self.iteration == args.train_iters
            if (due and bad_in_row == 0) or stop:
                path = self.save()
                self.log.print(f"lumina: saved checkpoint {path}")
            if stop:
                self.log.print(f"lumina: received signal {self.stop.signal or 'on another rank'}; "
                               f"checkpoint saved at iteration {self.iteration}, exiting cleanly")
                self.log.close()
                return 0
        total_time = time.perf_counter() - start_time
        tokens_per_s = (self.iteration - start_iter) * tokens_per_iter / total_time
        overall = self._train_record(last_loss, stats, tokens_per_s)  # whole-run rates, last stats
        summary = {**overall, "final_loss": last_loss, "final_ppl": overall["ppl"],
                   "valid_loss": last_eval, "train_time_s": total_time,
                   "iterations": self.iteration - start_iter,
                   "flops_reduction": 1.0 - self.acc.mod_flops_ratio}
        if self.rank == 0:
            write_summary(self.run_dir, summary)
        self.log.print("\n" + summary_table(summary))
        self.log.print(f"\nlumina: checkpoint {os.path.abspath(self.save_dir)}\n"
                       f"lumina: metrics    {os.path.abspath(self.log.path)}\n"
                       f"lumina: logs       {os.path.abspath(os.path.join(self.run_dir, 'train.log'))}\n"
                       f"lumina: tensorboard --logdir {os.path.abspath(args.tensorboard_dir or os.path.join(self.run_dir, 'tensorboard'))}")
        self.log.close()
        return 0

    def _routing_stats(self) -> dict:
        if not self.pipe:
            return self.model.routing_stats()
        import torch.distributed as dist

        from lumina.model.transformer import summarize_routing

        gathered: list = [None] * dist.get_world_size()  # each stage knows its own layers
        dist.all_gather_object(gathered, self.model.routing_layers() if self.layout.coords(self.rank).dp == 0 else [])
        return summarize_routing([layer for stage in gathered for layer in stage])

    def _train_record(self, loss: float | None, stats: dict, tokens_per_s: float) -> dict:
        tflops = self.acc.flops_per_token * tokens_per_s / 1e12 / self.res.world_size
        record = {"iteration": self.iteration, "split": "train", "loss": loss,
                  "ppl": math.exp(min(loss, 50.0)) if loss is not None else None,
                  "lr": self.lr, "grad_norm": _grad_norm(self.engine, self.grad_norm),
                  "tokens_per_s": tokens_per_s, "tflops": tflops, "mfu": tflops / self.peak,
                  "peak_mem_gb": peak_memory_bytes(self.device) / 2**30,
                  "mod_flops_ratio": self.acc.mod_flops_ratio if self.cfg.mod else None}
        record.update(stats)
        return record


def _grad_norm(engine, fallback: float | None) -> float | None:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else fallback


def train(args: argparse.Namespace) -> int:
    try:
        if args.dry_run is not None:  # lay out the ranks and stop: no process group, no tensors
            _, cfg, _, layout, _ = plan_layout(args)
            print(dry_run(layout, cfg))
            return 0
        trainer = Trainer(args)
    except ValueError as exc:
        print(f"lumina: error: {exc}", file=sys.stderr)
        return 2
    return trainer.run()
