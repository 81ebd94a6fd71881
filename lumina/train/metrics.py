"""Metrics every --log-interval: metrics.jsonl, TensorBoard and the console (progress bar + ETA)."""

from __future__ import annotations

import json
import math
import os
import sys

from lumina.util.files import atomic_write_text


class MetricsLogger:
    """Rank 0 writes; other ranks hold a logger that does nothing."""

    def __init__(self, run_dir: str, tensorboard_dir: str, total_iters: int, start_iter: int,
                 enabled: bool, progress: bool):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.bar = None
        self.tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.file = open(self.path, "a")
        self.text_log = open(os.path.join(run_dir, "train.log"), "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(tensorboard_dir)
        except ImportError:
            print("lumina: tensorboard is not installed; metrics go to metrics.jsonl only", file=sys.stderr)
        if progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_iters, initial=start_iter, unit="it", dynamic_ncols=True)

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(f"{record.get('split', 'train')}/{key}", value, record["iteration"])
        self.print(format_record(record))

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        self.text_log.write(line + "\n")
        self.text_log.flush()
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()
        self.text_log.close()


_CONSOLE_KEYS = (("loss", "loss {:.4f}"), ("ppl", "ppl {:.2f}"), ("lr", "lr {:.2e}"),
                 ("grad_norm", "gnorm {:.3f}"), ("tokens_per_s", "{:.0f} tok/s"),
                 ("tflops", "{:.3f} TFLOP/s"), ("mfu", "MFU {:.1%}"), ("peak_mem_gb", "mem {:.2f} GiB"),
                 ("moe_dropped_fraction", "drop {:.3f}"), ("moe_load_balance", "bal {:.3f}"),
                 ("mod_skip_fraction", "skip {:.3f}"), ("mod_predictor_accuracy", "pred acc {:.3f}"),
                 ("mod_flops_ratio", "FLOPs x{:.3f}"))


def format_record(record: dict) -> str:
    parts = [f"[{record.get('split', 'train')} {record['iteration']}]"]
    for key, fmt in _CONSOLE_KEYS:
        if isinstance(record.get(key), (int, float)):
            parts.append(fmt.format(record[key]))
    return " ".join(parts)


SUMMARY_COLUMNS = (("final loss", "final_loss", "{:.4f}"), ("ppl", "final_ppl", "{:.2f}"),
                   ("time", "train_time_s", "{:.1f} s"), ("peak memory", "peak_mem_gb", "{:.2f} GiB"),
                   ("tokens/s", "tokens_per_s", "{:.0f}"), ("MFU", "mfu", "{:.2%}"),
                   ("skip rate", "mod_skip_fraction", "{:.1%}"),
                   ("FLOPs reduction", "flops_reduction", "{:.1%}"),
                   ("expert utilisation", "moe_utilisation", "{:.1%}"),
                   ("load balance", "moe_load_balance", "{:.3f}"))


def summary_table(summary: dict) -> str:
    """The original benchmark table's columns, for this run; '-' where a mode has no such figure."""
    header = [c[0] for c in SUMMARY_COLUMNS]
    cells = [fmt.format(summary[key]) if isinstance(summary.get(key), (int, float)) else "-"
             for _, key, fmt in SUMMARY_COLUMNS]
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    return "\n".join(["  ".join(h.ljust(w) for h, w in zip(header, widths)),
                      "  ".join(c.ljust(w) for c, w in zip(cells, widths))])


def write_summary(run_dir: str, summary: dict) -> None:
    atomic_write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=1))
