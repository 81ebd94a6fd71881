"""Helpers for the tests/hf tests: models, comparisons and the `lumina` command in-process."""

from __future__ import annotations

import torch

from lumina.config import ModelConfig, MoEConfig

# Logits through transformers vs Lumina's, at fp32 (issue 18).
LOGIT_TOL = 1e-4


def perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every tensor moved by noise: at init norms are all 1 and biases 0, which would hide a
    mapping that swapped two norms or dropped a bias."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def dropless(cfg: ModelConfig) -> ModelConfig:
    """HF Mixtral and the exported file run MoE dropless; so must the Lumina side of a comparison."""
    if cfg.moe is None:
        return cfg
    return cfg.replace(moe=MoEConfig(**{**cfg.moe.__dict__, "dropless": True}))


def lumina_model(cfg: ModelConfig, state: dict[str, torch.Tensor]):
    from lumina.model import LuminaLM

    model = LuminaLM(cfg)
    model.load_state_dict(state)
    return model.eval()


def tokens(vocab: int, shape=(2, 48), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from lumina.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str, *needles: str) -> None:
    """A refusal: exit code 2 and one line on stderr that contains every needle."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def continue_command(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("continue with: "))
    return line.removeprefix("continue with: ").split()


def assert_trainer_accepts(stdout: str, ckpt_dir: str) -> None:
    """The printed `lumina train` flags resolve exactly the checkpoint's config (what `--load` checks)."""
    from lumina.config import ModelConfig
    from lumina.data import load_tokenizer
    from lumina.pretrain import build_parser
    from lumina.train.args import model_config
    from lumina.train.checkpoint import check_compatible, latest
    from lumina.train.loop import padded_vocab

    argv = continue_command(stdout)[2:]
    args = build_parser().parse_args(argv)
    assert args.load == ckpt_dir
    cfg = model_config(args).replace(vocab_size=padded_vocab(load_tokenizer(args.tokenizer_model).vocab_size))
    _, meta = latest(ckpt_dir)
    check_compatible(meta, cfg, ckpt_dir)
    assert ModelConfig.from_dict(meta["model"]) == cfg
