"""Compiled modules (``make native``): found by name, and stale when older than their source."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

from node.native import compiled, stale, summary

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so


def tree(root: Path, module: str, source_mtime: float, extension_mtime: float) -> Path:
    package, _, name = module.rpartition(".")
    directory = root / package.replace(".", "/")
    directory.mkdir(parents=True, exist_ok=True)
    source, extension = directory / f"{name}.py", directory / f"{name}{SUFFIX}"
    source.write_text("")
    extension.write_bytes(b"")
    os.utime(source, (source_mtime, source_mtime))
    os.utime(extension, (extension_mtime, extension_mtime))
    return extension


def test_extensions_are_named_as_their_modules_and_a_newer_source_makes_one_stale(
    tmp_path: Path,
) -> None:
    fresh = tree(tmp_path, "federation.merge", 1_000, 2_000)
    tree(tmp_path, "node.sqlite_store", 3_000, 2_000)  # edited after it was compiled
    assert compiled(tmp_path) == {
        "federation.merge": fresh,
        "node.sqlite_store": tmp_path / "node" / f"sqlite_store{SUFFIX}",
    }
    assert stale(tmp_path) == ["node.sqlite_store"]
    assert "STALE" in summary(tmp_path) and "node.sqlite_store" in summary(tmp_path)


def test_an_extension_whose_source_is_gone_is_stale_and_none_means_interpreted(
    tmp_path: Path,
) -> None:
    assert compiled(tmp_path) == {} and stale(tmp_path) == []
    assert summary(tmp_path).startswith("all modules interpreted")
    tree(tmp_path, "ops.metrics", 1_000, 2_000)
    (tmp_path / "ops" / "metrics.py").unlink()
    assert stale(tmp_path) == ["ops.metrics"]
