"""The package surface: every public name resolves, and prepare's workers stay light."""

import subprocess
import sys

import lumina.data


def test_every_public_name_resolves():
    assert sorted(lumina.data.__all__) == sorted(lumina.data._EXPORTS)
    for name in lumina.data.__all__:
        assert getattr(lumina.data, name).__name__ == name


def test_prepare_workers_import_neither_torch_nor_datasets():
    # spawned workers import lumina.data.prepare; torch and datasets would cost seconds per worker
    code = "import sys, lumina.data.prepare; print('torch' in sys.modules, 'datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
