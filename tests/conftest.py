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
