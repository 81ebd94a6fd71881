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


def assert_resume_is_exact(tmp_path, *args: str, world_size: int) -> str:
    """Train 6 iterations saving at 3 and 6, resume a second run from iteration 3 on the same
    layout, and check iterations 4-6 are bit-equal. Returns the first run's checkpoint dir, with
    `latest` pointing at iteration 6 again."""
    import os

    from tests.train.runs import train, train_losses

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    args = (*args, "--train-iters", "6", "--save-interval", "3")
    assert train(full, *args, world_size=world_size) == 0
    ckpts = os.path.join(full, "checkpoints")
    latest = os.path.join(ckpts, "latest")
    with open(latest, "w") as f:
        f.write("iter_0000003")
    assert train(part, *args, "--load", ckpts, world_size=world_size) == 0
    a, b = train_losses(full), train_losses(part)
    assert sorted(b) == [4, 5, 6] and [b[i] for i in b] == [a[i] for i in b]
    with open(latest, "w") as f:
        f.write("iter_0000006")
    return ckpts
