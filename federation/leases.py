"""Queue ownership under leases: the roles, the key layout, the named errors, the fence.

Shaped like etcd's ``concurrency`` package. A ``Session`` owns one lease at a time and
keeps it alive; ``close()`` revokes it. A ``LeaseBackend`` moves the owner key of a queue
(``/sundesk/owners/<queue>``, attached to the owner's lease) only by transactions guarded
by the key's revision, and fails with a named error. The key's ``mod_revision`` is the
queue's epoch, the fencing token every owner-only action carries: ``EpochFence`` makes an
action with an older epoch than one already seen lose.

Implementations: ``etcd_leases`` (aetcd, the real thing) and ``memory_leases`` (one
process, manual time, for unit tests of the logic that uses ownership).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from node.errors import FailedPrecondition, InvalidArgument, Unavailable

OWNERS_PREFIX = "/sundesk/owners/"
MEMBERS_PREFIX = "/sundesk/members/"

OwnerKind = Literal["home", "borrowed", "on-call"]
OWNER_KINDS: frozenset[str] = frozenset({"home", "borrowed", "on-call"})

SessionState = Literal["alive", "expiring", "lost"]
"""``alive``: renewing. ``expiring``: renewals fail but the local lease deadline has not
passed, so ownership still holds. ``lost``: lease gone or deadline passed; stop acting."""


# -- named errors ----------------------------------------------------------------------


class NotOwner(FailedPrecondition):
    """A guarded change found the owner key at another epoch or under another lease
    (``ErrElectionNotLeader``)."""

    def __init__(self, message: str, *, queue: str, current: Owner | None = None) -> None:
        super().__init__(message)
        self.queue = queue
        self.current = current


class OwnershipConflict(FailedPrecondition):
    """Create-if-absent lost: someone else owns the queue; ``current`` names them."""

    def __init__(self, message: str, *, queue: str, current: Owner | None = None) -> None:
        super().__init__(message)
        self.queue = queue
        self.current = current


class MemberGone(FailedPrecondition):
    """The handoff target is not registered under the lease the caller named."""


class StaleEpoch(FailedPrecondition):
    """An owner-only action carries an epoch older than one already seen for its queue."""

    def __init__(self, queue: str, epoch: int, highest: int) -> None:
        super().__init__(
            f"queue {queue!r}: epoch {epoch} is stale, epoch {highest} was already seen"
        )
        self.queue = queue
        self.epoch = epoch
        self.highest = highest


class LeaseLost(Unavailable):
    """Our session's lease is lost or past its local deadline: not an owner of anything
    until a new lease is established."""


# -- values ----------------------------------------------------------------------------


class Owner(NamedTuple):
    """Who owns a queue: ``(region, epoch, value)``; ``value`` is the decoded JSON."""

    region: str
    epoch: int
    value: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.value.get("kind", ""))

    @property
    def since(self) -> str:
        return str(self.value.get("since", ""))


class OwnerEvent(NamedTuple):
    """One change of an owner key: ``region`` is None when the key was deleted (released,
    or the owner's lease expired). ``epoch`` is the revision of the change."""

    queue: str
    region: str | None
    epoch: int
    kind: str | None = None


# -- roles -----------------------------------------------------------------------------


class Session(Protocol):
    """One lease held for a node's life, renewed every TTL/3 (etcd's ``Session``)."""

    region: str

    @property
    def lease_id(self) -> int | None:
        """The current lease; None while none is held. Changes when a lost lease is
        replaced by a new one."""
        ...

    @property
    def state(self) -> SessionState: ...

    def alive(self) -> bool:
        """False once the lease is known lost or its local deadline has passed."""
        ...

    async def wait_done(self) -> None:
        """Return when the lease held at the time of the call is lost, or on close."""
        ...

    async def close(self) -> None:
        """Stop renewing and revoke the lease: its member and owner keys go with it."""
        ...


class OwnerDirectory(Protocol):
    """Read side: who owns what and who is a member (ops view, handoff planning)."""

    async def owner(self, queue: str) -> Owner | None: ...

    async def owners(self) -> dict[str, Owner]: ...

    async def member(self, region: str) -> dict[str, Any] | None:
        """The member key's JSON plus ``lease_id``, or None if the region has no session."""
        ...

    async def members(self) -> dict[str, dict[str, Any]]: ...

    def watch(
        self, prefix: str = OWNERS_PREFIX, start_revision: int | None = None
    ) -> AsyncGenerator[OwnerEvent, None]: ...


class LeaseBackend(OwnerDirectory, Protocol):
    """Every ownership change is one transaction guarded by the owner key's revision."""

    @property
    def session(self) -> Session: ...

    async def acquire(self, queue: str, kind: str) -> int:
        """Create-if-absent; the new epoch. ``OwnershipConflict`` names the owner."""
        ...

    async def handoff(
        self, queue: str, to_region: str, to_lease_id: int, kind: str, expected_epoch: int
    ) -> int:
        """Move the key to the incoming node's lease in one step; the new epoch."""
        ...

    async def release(self, queue: str, expected_epoch: int) -> None: ...

    def is_owner(self, queue: str) -> int | None:
        """Our epoch if we hold the queue as last observed and the session is alive."""
        ...


# -- the fence -------------------------------------------------------------------------


class EpochFence:
    """Remembers the highest epoch seen per queue; older epochs lose.

    Equal epochs pass: one owner acts many times under one epoch.
    """

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}

    def check(self, queue: str, epoch: int) -> None:
        highest = self._highest.get(queue)
        if highest is not None and epoch < highest:
            raise StaleEpoch(queue, epoch, highest)
        self._highest[queue] = epoch

    def highest(self, queue: str) -> int | None:
        return self._highest.get(queue)


class LocalView:
    """What this node last saw of each owner key, ordered by etcd revision, so that
    ``is_owner`` answers without I/O. A view older than one already recorded loses
    (a lagging watch must not resurrect an ownership a transaction already ended)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int] | None] = {}
        self._as_of: dict[str, int] = {}

    def observe(self, queue: str, as_of: int, holder: tuple[int, int] | None) -> None:
        """``holder`` is the key's ``(epoch, lease)`` at revision ``as_of``, or None."""
        if as_of < self._as_of.get(queue, 0):
            return
        self._as_of[queue] = as_of
        self._last[queue] = holder

    def forget(self, queue: str) -> None:
        self._last[queue] = None

    def held(self, queue: str, lease: int | None) -> int | None:
        """The epoch if ``lease`` (ours) held the queue when we last looked."""
        last = self._last.get(queue)
        if last is None or lease is None or last[1] != lease:
            return None
        return last[0]

    def queues(self) -> set[str]:
        return {queue for queue, last in self._last.items() if last is not None}


# -- key layout and encoding, shared by the implementations ----------------------------


def owner_key(queue: str) -> str:
    _check_name("queue", queue)
    return OWNERS_PREFIX + queue


def member_key(region: str) -> str:
    _check_name("region", region)
    return MEMBERS_PREFIX + region


def check_kind(kind: str) -> str:
    if kind not in OWNER_KINDS:
        raise InvalidArgument(f"owner kind {kind!r} is not one of {sorted(OWNER_KINDS)}")
    return kind


def encode_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def owner_value(region: str, kind: str, since: datetime) -> bytes:
    return encode_json({"region": region, "since": since.isoformat(), "kind": check_kind(kind)})


def decode_json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def describe(owner: Owner | None) -> str:
    if owner is None:
        return "nobody"
    return f"{owner.region} ({owner.kind or '?'}, epoch {owner.epoch})"


def _check_name(what: str, name: str) -> None:
    if not name or "/" in name or name.strip() != name:
        raise InvalidArgument(f"{what} name {name!r} must be non-empty, without '/' or spaces")
