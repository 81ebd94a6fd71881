"""The training job: DeepSpeed engine, data, loop, eval, metrics, checkpoints and signals."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import uuid

import torch

from lumina.accounting import account
from lumina.config import ModelConfig
from lumina.model import LuminaLM
from lumina.train import checkpoint, distributed, rundir
from lumina.train.args import Resolved, resolve
from lumina.parallel.dry_run import dry_run
from lumina.parallel.layout import ParallelLayout, dry_run_world_size, layout_from_args
from lumina.parallel.wiring import wire
from lumina.train.dsconfig import bf16_enabled, zero_stage_of
from lumina.train.dsconfig import build as build_ds_config
from lumina.train.hardware import describe_device, peak_memory_bytes, peak_tflops
from lumina.train.metrics import MetricsLogger, summary_table, write_summary
from lumina.train.optim import lr_at, make_optimizer, param_groups
from lumina.train.step import PipeStep, PlainStep

EXIT_NONFINITE = 3
EXIT_SAVE_FAILED = 4


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """Round the embedding up, as Megatron does, so the vocab splits evenly and GEMMs align."""
    return int(math.ceil(vocab_size / multiple) * multiple)


class RunComplete(Exception):
    """--load names a checkpoint at or past --train-iters: exit 0 and say so."""


class _StopFlag:
    """SIGTERM / SIGUSR1 (what SLURM sends before a kill or preemption) and Ctrl-C (SIGINT) ask for
    save-and-exit. A second Ctrl-C interrupts at once, as Python's default would."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
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
        self.res = res
        self.seq = self.cfg.seq_length
        self.resume = None
        if args.load is not None:  # refuse a wrong checkpoint before any process group exists
            tag, meta = checkpoint.latest(args.load)
            checkpoint.check_compatible(meta, self.cfg, args.load, self.tokenizer.sha256)
            if meta["iteration"] >= args.train_iters:  # a resubmitted job that already finished
                raise RunComplete(f"lumina: the run is complete: {args.load} holds iteration {meta['iteration']} "
                                  f"and --train-iters is {args.train_iters}; nothing to do")
            self.resume = (tag, meta)
        # Retention deletes only this run's checkpoints; a resumed run continues its run's id.
        self.run_id = (self.resume[1].get("run_id") if self.resume else None) or uuid.uuid4().hex
        self.run_dir = args.run_dir or os.path.join("runs", f"{self.cfg.name}_{self.cfg.mode}")
        self.save_dir = args.save or os.path.join(self.run_dir, "checkpoints")
        self.tb_dir = args.tensorboard_dir or os.path.join(self.run_dir, "tensorboard")
        for flag, path in (("--run-dir", self.run_dir), ("--tensorboard-dir", self.tb_dir), ("--save", self.save_dir)):
            rundir.check_output_dir(flag, path)
        rundir.check_room("--save", self.save_dir, account(self.cfg, self.seq).params_total)

        self.device = distributed.device()
        if not args.skip_memory_check:
            rundir.check_memory(self.cfg, self.layout, res.micro_batch_size, res.grad_accum, zero_stage_of(self.ds_config),
                                bf16_enabled(self.ds_config), args.recompute_activations, self.device, res.world_size)
        distributed.init(self.device)
        import torch.distributed as dist

        self.rank = dist.get_rank()
        # One trainer per run directory. Rank 0 holds the lock; every rank learns the outcome, so a
        # refusal stops them all rather than leaving the others waiting.
        self.lock = rundir.RunLock(self.run_dir)
        refusal = None
        if self.rank == 0:
            try:
                warning = self.lock.acquire()
                if warning:
                    print(warning, file=sys.stderr)
            except ValueError as exc:
                refusal = str(exc)
        outcome = [refusal]
        dist.broadcast_object_list(outcome, src=0)
        if outcome[0] is not None:
            raise ValueError(outcome[0])
        self.dp_rank = self.layout.coords(self.rank).dp  # TP peers read the same data
        self.train_loader, self.valid_loader = _data(args, self.seq, res.micro_batch_size, self.dp_rank,
                                                     res.dp_size, self.tokenizer)
        self.wiring = wire(self.layout, args.sequence_parallel)
        ep = self.wiring.ep
        torch.manual_seed(args.seed)
        if self.layout.pp > 1:
            from lumina.parallel import pipeline

            model = pipeline.build(self.cfg, self.layout, args.seed, args.recompute_activations, self.wiring.layers)
        else:
            model = LuminaLM(self.cfg, self.wiring.layers, init_seed=args.seed)  # same weights under any layout
            model.set_activation_checkpointing(args.recompute_activations)
        zero = self.ds_config.get("zero_optimization", {})
        offload = zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
        groups_ = param_groups(model, args.weight_decay, ep.group_name if ep else "experts")
        self.optimizer = make_optimizer(groups_, args.lr, (args.adam_beta1, args.adam_beta2), args.adam_eps, offload)
        self.bf16 = bf16_enabled(self.ds_config)
        # At ZeRO-0 Lumina computes the true global gradient norm itself and clips by it
        # (lumina/train/gradnorm.py says why DeepSpeed's is wrong there), except under DeepSpeed's
        # BF16 optimizer, which a bf16 pipeline gets and which counts every gradient once itself.
        own_norm = zero.get("stage", 0) == 0 and not (self.bf16 and self.layout.pp > 1)
        clip = None
        if own_norm:
            clip = self.ds_config.get("gradient_clipping", 0.0) or None
            # 0, not absent: DeepSpeed 0.19's default for an absent gradient_clipping is 1.0.
            self.ds_config["gradient_clipping"] = 0.0
        if self.layout.pp > 1:
            # DeepSpeed's activation partitioning splits only the first tensor of a stage's output
            # over the TP group and assumes the rest small; Megatron-DeepSpeed turns it off with
            # MoE. Lumina sends the whole (hidden, aux) pair: one code path for every layout.
            self.ds_config.setdefault("pipeline", {}).update(pipe_partitioned=False, grad_partitioned=False)
        import deepspeed

        ctx = contextlib.nullcontext()
        if ep is not None:
            from lumina.model.moe import MoE
            from lumina.parallel.expert import deepspeed_sees_lumina_moe

            ctx = deepspeed_sees_lumina_moe(MoE)
        with ctx:
            self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer,
                                                        config=self.ds_config, mpu=self.wiring.mpu)
        self.model: LuminaLM = self.engine.module  # a PipelineModule under pipeline parallel
        if res.world_size == 1 and zero.get("stage", 0) == 0:
            # One process has nothing to all-reduce, but DeepSpeed's ZeRO-0 backward still copies
            # every gradient into flat buckets and back (a full extra copy, each step).
            self.engine.enable_backward_allreduce = False
        self.step = (PipeStep if self.layout.pp > 1 else PlainStep)(self, clip, own_norm)
        self.iteration = 0
        if self.resume is not None:
            tag, meta = self.resume
            checkpoint.load(self.engine, self.engine.module, args.load, tag, meta, self._layout_record())
            if meta["loader"] is not None:  # None: a weights-only checkpoint (import, upcycle) reads from the start
                self.train_loader.load_state_dict(meta["loader"])
            self.engine.global_steps = meta["iteration"]
            self.engine.global_samples = meta["iteration"] * res.global_batch_size
            self.iteration = meta["iteration"]
        self.acc = account(self.cfg, self.seq)
        self.peak, self.peak_source = peak_tflops(self.device, args.peak_tflops)
        self.log = MetricsLogger(self.run_dir, self.tb_dir,
                                 args.train_iters, self.iteration, enabled=self.rank == 0,
                                 progress=not args.no_progress)

    # -- one iteration ----------------------------------------------------------------------
    def train_iteration(self) -> float | None:
        """Run one global batch. Returns the mean LM loss over DP, or None when a non-finite loss
        made every rank skip the update."""
        lr = lr_at(self.iteration, self.args.lr, self.args.min_lr, self.args.lr_warmup_iters, self.args.train_iters)
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        nxt = self.iteration + 1
        return self.step.train(poison="loss" if nxt in self.args.debug_nan_iters
                               else "grad" if nxt in self.args.debug_inf_grad_iters else None)

    def evaluate(self) -> float | None:
        """Mean held-out LM loss over --eval-iters global batches, the same ones every time.

        Counting global batches (not micro-batches per rank) makes the held-out set the first
        eval_iters x global_batch_size windows of the validation loader at every layout: each DP
        rank reads its rows of them, grad_accum micro-batches per global batch."""
        if self.args.eval_iters == 0:
            return None
        state = self.valid_loader.state_dict()
        loss = self.step.evaluate(self.args.eval_iters * self.res.grad_accum)
        self.valid_loader.load_state_dict(state)
        return loss

    # -- the job ----------------------------------------------------------------------------
    def save(self) -> str:
        return checkpoint.save(self.engine, self.engine.module, self.layout, self.wiring.tp_group, self.save_dir,
                               self.iteration, self.cfg, self.train_loader.state_dict(), self.args.keep_last,
                               {"preset": self.cfg.name, "mode": self.cfg.mode,
                                "tokenizer_sha256": self.tokenizer.sha256, "layout": self._layout_record(),
                                "run_id": self.run_id})

    def _layout_record(self) -> dict:
        """The layout a checkpoint records: for information, and to decide whether RNG streams
        carry over (a checkpoint loads at any layout)."""
        return {"tp": self.layout.tp, "pp": self.layout.pp, "ep": self.layout.ep, "dp": self.layout.dp,
                "zero": self.ds_config.get("zero_optimization", {}).get("stage", 0), "bf16": self.bf16}

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
            self.lock.touch()
            loss = self.train_iteration()
            self.iteration += 1
            if loss is None:
                bad_in_row += 1
                self.log.log({"iteration": self.iteration, "split": "train", "skipped": True,
                              "reason": "non-finite loss or gradient norm", "nonfinite_in_row": bad_in_row})
                if bad_in_row >= args.max_nonfinite_iters:
                    self.log.print(
                        f"lumina: stopping: {bad_in_row} iterations in a row had a NaN/inf loss or gradient norm "
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
                    stats = self.step.routing_stats()
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
                try:
                    path = self.save()
                except checkpoint.SaveFailed as exc:
                    self.log.print(f"lumina: error: {exc}. Free space (or fix --save) and resume with --load.")
                    self.log.close()
                    return EXIT_SAVE_FAILED
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

    def _train_record(self, loss: float | None, stats: dict, tokens_per_s: float) -> dict:
        tflops = self.acc.flops_per_token * tokens_per_s / 1e12 / self.res.world_size
        record = {"iteration": self.iteration, "split": "train", "loss": loss,
                  "ppl": math.exp(min(loss, 50.0)) if loss is not None else None,
                  "lr": self.lr, "grad_norm": self.step.logged_grad_norm(),
                  "tokens_per_s": tokens_per_s, "tflops": tflops, "mfu": tflops / self.peak,
                  "peak_mem_gb": peak_memory_bytes(self.device) / 2**30,
                  "mod_flops_ratio": self.acc.mod_flops_ratio if self.cfg.mod else None}
        record.update(stats)
        return record


def train(args: argparse.Namespace) -> int:
    try:
        if args.dry_run is not None:  # lay out the ranks and stop: no process group, no tensors
            _, cfg, _, layout, _ = plan_layout(args)
            print(dry_run(layout, cfg))
            return 0
        trainer = Trainer(args)
    except RunComplete as done:
        print(done, file=sys.stderr)
        return 0
    except ValueError as exc:
        print(f"lumina: error: {exc}", file=sys.stderr)
        return 2
    try:
        return trainer.run()
    finally:
        trainer.lock.release()
