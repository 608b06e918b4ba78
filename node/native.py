"""Which of Sundesk's modules run compiled, and whether any compiled one is stale.

``make native`` compiles the write path's hot modules with mypyc into C extensions next
to their sources; Python imports an extension before a ``.py`` of the same name. An
extension older than its source would run code that is no longer in the tree, so the
test suite refuses to start with one (``tests/conftest.py``) and a node warns at start.

Run: ``python -m node.native [--check]`` (``--check``: exit 1 unless something is
compiled and nothing is stale).
"""

from __future__ import annotations

import argparse
import importlib.machinery
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "federation", "ops")


def compiled(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> its compiled extension, for every extension in our packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.so")):
            # The most specific suffix first (.cpython-311-x86_64-linux-gnu.so, then .so).
            suffix = next(
                s for s in importlib.machinery.EXTENSION_SUFFIXES if path.name.endswith(s)
            )
            rel = path.relative_to(root)
            found[".".join((*rel.parts[:-1], path.name[: -len(suffix)]))] = path
    return found


def stale(root: Path = ROOT) -> list[str]:
    """Compiled modules whose source changed after they were compiled (or is gone)."""
    late = []
    for module, extension in compiled(root).items():
        source = extension.parent / (module.rpartition(".")[2] + ".py")
        if not source.exists() or source.stat().st_mtime > extension.stat().st_mtime:
            late.append(module)
    return late


def summary(root: Path = ROOT) -> str:
    modules = compiled(root)
    if not modules:
        return "all modules interpreted (`make native` compiles the hot ones)"
    text = f"{len(modules)} modules compiled: {', '.join(sorted(modules))}"
    late = stale(root)
    if late:
        text += (
            f"; STALE, older than their sources: {', '.join(late)} "
            "(run `make native`, or `make interpreted` to drop them)"
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    print(summary())
    if args.check and (not compiled() or stale()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
