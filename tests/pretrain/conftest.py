"""Fixtures of the SimCLR tests; the IDX fixture generator lives in ``fmnist_fixture.py``."""

from pathlib import Path

import pytest
from fmnist_fixture import write_fake_fashion_mnist


@pytest.fixture
def fake_fmnist(tmp_path: Path) -> Path:
    return write_fake_fashion_mnist(tmp_path / "fmnist")
