"""Named errors of Sundesk: one root class, one gRPC status per kind, mapped in one place.

Each error carries a message written for the person who has to fix the input; the
servicer layer turns it into a status with that message (see ``node/grpc_errors.py``).
"""

from __future__ import annotations


class SundeskError(Exception):
    """Root of every error Sundesk raises on purpose."""

    code_name = "INTERNAL"


class InvalidArgument(SundeskError):
    code_name = "INVALID_ARGUMENT"


class NotFound(SundeskError):
    code_name = "NOT_FOUND"


class AlreadyExists(SundeskError):
    code_name = "ALREADY_EXISTS"


class FailedPrecondition(SundeskError):
    """The request is well-formed but the ticket is not in a state that allows it."""

    code_name = "FAILED_PRECONDITION"


class StaleVersion(SundeskError):
    """Optimistic concurrency: the client's version is not the ticket's current one."""

    code_name = "ABORTED"


class PermissionDenied(SundeskError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(SundeskError):
    code_name = "UNAUTHENTICATED"


class Unavailable(SundeskError):
    code_name = "UNAVAILABLE"


class ResourceExhausted(SundeskError):
    code_name = "RESOURCE_EXHAUSTED"


class ConfigError(InvalidArgument):
    """A configuration file or value is wrong; the message names the field."""


class StorageError(SundeskError):
    """The data directory cannot be used (unreadable, not writable, corrupt)."""

    code_name = "UNAVAILABLE"
