import os

import pytest

from lumina.ops import backend


@pytest.fixture(scope="session")
def ext():
    """The compiled extension. Without it the kernel tests are skipped, or fail under
    LUMINA_REQUIRE_EXT=1 (CI builds the extension and sets it)."""
    module = backend.load_extension()
    if module is None:
        message = f"lumina._C is not built: {backend.extension_error()}"
        if os.environ.get("LUMINA_REQUIRE_EXT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return module


@pytest.fixture(params=["kernel", "reference"])
def any_backend(request, monkeypatch, ext):
    """Run a test once through the C++ kernels and once through the reference."""
    monkeypatch.setenv("LUMINA_ROUTING_BACKEND", "auto" if request.param == "kernel" else "reference")
    return request.param
