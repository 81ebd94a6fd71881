"""One-process reference runs, shared by every parallel-equality test of the session."""

import pytest

from tests.train.runs import train


@pytest.fixture(scope="session")
def one_process(tmp_path_factory):
    """one_process(mode, micro_batch) -> run directory of a 1-rank run with global batch 8
    (8 / micro_batch accumulation steps), 5 iterations; each is trained once per session."""
    cache: dict = {}

    def get(mode: str, micro_batch: int = 4) -> str:
        key = (mode, micro_batch)
        if key not in cache:
            run = str(tmp_path_factory.mktemp(f"one-{mode}-{micro_batch}"))
            assert train(run, "--mode", mode, "--train-iters", "5", "--global-batch-size", "8",
                         "--micro-batch-size", str(micro_batch)) == 0
            cache[key] = run
        return cache[key]

    return get


def assert_same_losses(losses: dict, reference: dict) -> None:
    """fp32: relative 1e-5 at every one of the (at least 5) iterations."""
    assert sorted(losses) == sorted(reference) and len(reference) >= 5
    for i in reference:
        assert losses[i] == pytest.approx(reference[i], rel=1e-5), f"iteration {i}"


def assert_same_valid_loss(run: str, reference: str) -> None:
    """The held-out loss of the last iteration equals the reference run's (fp32, relative 1e-5):
    the same held-out tokens at any layout. Reading eval_iters micro-batches per rank instead
    (eval_iters x micro_batch x DP windows, so more at 2 DP ranks than at 1 with accumulation)
    moved it by 8e-4 relative at EP2."""
    from tests.train.runs import metrics

    def valid(r: str) -> dict:
        return {m["iteration"]: m["loss"] for m in metrics(r) if m["split"] == "valid"}

    ours, ref = valid(run), valid(reference)
    assert ref and sorted(ours) == sorted(ref)
    for i in ref:
        assert ours[i] == pytest.approx(ref[i], rel=1e-5), f"held-out loss, iteration {i}"


def assert_same_run(run: str, reference: str) -> None:
    """Losses and the logged global gradient norms equal the reference run's (fp32, relative
    1e-5). The norm catches a gradient counted twice or missed on some rank (a stage's, an expert
    block's, a TP shard's), which the losses show only once clipping engages."""
    from tests.train.runs import metrics, train_losses

    assert_same_losses(train_losses(run), train_losses(reference))
    assert_same_valid_loss(run, reference)
    norms = {r["iteration"]: r["grad_norm"] for r in metrics(run) if r["split"] == "train"}
    ref = {r["iteration"]: r["grad_norm"] for r in metrics(reference) if r["split"] == "train"}
    assert sorted(norms) == sorted(ref)
    for i in ref:
        assert norms[i] == pytest.approx(ref[i], rel=1e-5), f"grad norm, iteration {i}"


def assert_resume_is_exact(tmp_path, *args: str, world_size: int, iters: int = 6, resume_at: int = 3,
                           timeout: float = 300.0) -> str:
    """Train `iters` iterations saving every `resume_at`, resume a second run from iteration
    `resume_at` on the same layout, and check the later iterations are bit-equal. Returns the
    first run's checkpoint dir, with `latest` pointing at its last iteration again."""
    import os

    from tests.train.runs import train, train_losses

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    args = (*args, "--train-iters", str(iters), "--save-interval", str(resume_at))
    assert train(full, *args, world_size=world_size, timeout=timeout) == 0
    ckpts = os.path.join(full, "checkpoints")
    latest = os.path.join(ckpts, "latest")
    with open(latest, "w") as f:
        f.write(f"iter_{resume_at:07d}")
    assert train(part, *args, "--load", ckpts, world_size=world_size, timeout=timeout) == 0
    a, b = train_losses(full), train_losses(part)
    assert sorted(b) == list(range(resume_at + 1, iters + 1)) and [b[i] for i in b] == [a[i] for i in b]
    with open(latest, "w") as f:
        f.write(f"iter_{iters:07d}")
    return ckpts
