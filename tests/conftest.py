import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def lumina_cache(tmp_path_factory):
    """A private cache so tests never depend on (or write to) the user's ~/.cache/lumina."""
    path = str(tmp_path_factory.mktemp("lumina-cache"))
    old = os.environ.get("LUMINA_CACHE")
    os.environ["LUMINA_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("LUMINA_CACHE", None)
    else:
        os.environ["LUMINA_CACHE"] = old


@pytest.fixture(scope="session")
def fp32_run(tmp_path_factory):
    """fp32_run(mode, *flags) -> run directory of a 1-rank fp32 run of tests/train/bf16.py's BF16_RUN,
    the reference of every bf16 test; each is trained once per session."""
    from tests.train.bf16 import BF16_RUN
    from tests.train.runs import train

    cache: dict = {}

    def get(mode: str, *flags: str) -> str:
        if (mode, flags) not in cache:
            run = str(tmp_path_factory.mktemp(f"fp32-{mode}"))
            assert train(run, "--mode", mode, *BF16_RUN, *flags) == 0
            cache[mode, flags] = run
        return cache[mode, flags]

    return get
