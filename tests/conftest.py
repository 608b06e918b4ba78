"""Shared fixtures: a real etcd server for the integration tests that need one."""

from __future__ import annotations

import faulthandler
import os
import sys
import tempfile

import pytest

faulthandler.enable(file=sys.stderr)

# The CLI picks up the credentials of a local federation (var/local/certs) when there is
# one; tests choose theirs explicitly, so point it at a directory with nothing in it.
os.environ["SUNDESK_HOME"] = tempfile.mkdtemp(prefix="sundesk-test-home-")

pytest_plugins = ["tests.support.etcd"]


def pytest_sessionstart(session: object) -> None:
    # A compiled module older than its source would test code that is not in the tree.
    from node.native import stale, summary

    if stale():
        raise pytest.UsageError(summary())
