"""Shared fixtures: a real etcd server for the integration tests that need one."""

from __future__ import annotations

import faulthandler
import sys

faulthandler.enable(file=sys.stderr)

pytest_plugins = ["tests.support.etcd"]
