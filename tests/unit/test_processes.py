"""Port allocation for the processes tests and `sundesk local up` start."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ops import processes


class ScriptedSocket:
    """Binds to the next port of a script, as a kernel that recycles closed ports might."""

    script: itertools.cycle[int]

    def __init__(self) -> None:
        self.port = 0

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self.script)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        pass


def test_a_port_is_never_handed_out_twice_even_when_the_kernel_recycles_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ScriptedSocket.script = itertools.cycle([41000, 41001, 41000, 41001, 41002, 41003])
    monkeypatch.setattr(processes.socket, "socket", ScriptedSocket)
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    nodes = processes.free_ports(2)
    proxies = processes.free_ports(2)  # the kernel offers 41000 and 41001 again first
    assert nodes == [41000, 41001] and proxies == [41002, 41003]


def test_running_out_of_ports_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    ScriptedSocket.script = itertools.cycle([41000])
    monkeypatch.setattr(processes.socket, "socket", ScriptedSocket)
    monkeypatch.setattr(processes, "_HANDED_OUT", set())
    processes.free_ports(1)
    with pytest.raises(OSError, match="found only 0 of 1"):
        processes.free_ports(1)


def test_real_ports_are_distinct_across_calls() -> None:
    given: list[Any] = [p for _ in range(20) for p in processes.free_ports(5)]
    assert len(set(given)) == len(given) == 100
