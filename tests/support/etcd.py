"""The ``etcd_server`` fixture: a fresh real etcd per test (see ``ops/etcd_process.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.etcd_process import EtcdServer, find_etcd, free_port

__all__ = ["EtcdServer", "etcd_server", "find_etcd", "free_port"]


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd per test, data under the test's tmp_path, stopped at teardown."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.close()
