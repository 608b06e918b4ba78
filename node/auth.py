"""Who may call what: the access policy, and the interceptor that applies it.

Every connection is mutual TLS (``ops/certs.py``). On top of it:

- People and machines present ``authorization: Bearer <token>`` (``node/tokens.py``).
- Roles: ``agent`` works tickets of any queue and the Sun's notes, escalations and
  acknowledgements (its writes carry its subject, ``node/stamping.py``), ``oncall``
  reads and acknowledges handoffs, ``ops`` reads everything (node status included) and
  writes nothing, ``machine`` sends telemetry for its own asset only. ``node`` is
  reserved for federation peers, which authenticate with their node certificate: no token
  of role ``node`` is issued, and one presented is refused.
- ``Federation/Pull`` is reachable only from a peer that presented a node certificate,
  pulling as the region that certificate names; ``Federation/Status`` also answers ops
  tokens. Health checking and reflection stay open.

``authorize`` is a pure function of the claims, the method and the request, so the whole
policy is a table test. ``AuthInterceptor`` turns failures into UNAUTHENTICATED (no
token, malformed, bad signature, expired) or PERMISSION_DENIED (not allowed), never a
traceback, and exposes the caller to handlers through ``current_claims``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from node.clock import Clock, SystemClock
from node.errors import PermissionDenied, SundeskError, Unauthenticated
from node.grpc_errors import MalformedRequest, status_of
from node.limits import RateLimited, RateLimiter
from node.stamping import stamp_actor, stamps
from node.tokens import (
    AGENT,
    ISSUABLE_ROLES,
    MACHINE,
    NODE,
    ONCALL,
    OPS,
    ROLES,
    Claims,
    check_secret,
    epoch,
    issue_token,
    verify_token,
)
from ops.certs import region_of_peer

READERS = frozenset({AGENT, ONCALL, OPS})

FEDERATION = "sundesk.v1.Federation"
TELEMETRY = "sundesk.v1.Telemetry"
DESK = "sundesk.v1.Desk"
SUN = "sundesk.v1.Sun"
CONTRACTS = "sundesk.v1.Contracts"  # customers and assets: registered by agents
ACK_HANDOFF = "sundesk.v1.Sun/AckHandoff"
FEDERATION_STATUS = "sundesk.v1.Federation/Status"
log = logging.getLogger("sundesk.auth")

OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

VERIFIED_CACHE = 4096  # tokens remembered as verified
_METHOD = re.compile(r"^/([A-Za-z_][\w.]*)/([A-Za-z_]\w*)$")

current_claims: contextvars.ContextVar[Claims | None] = contextvars.ContextVar(
    "sundesk_current_claims", default=None
)
current_peer_region: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "sundesk_current_peer_region", default=None
)


# ----- policy -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # pure, and asked on every call
def split_method(method: str) -> tuple[str, str]:
    """``/sundesk.v1.Desk/CreateTicket`` -> (``sundesk.v1.Desk``, ``CreateTicket``)."""
    match = _METHOD.match(method)
    if match is None:
        raise PermissionDenied(f"{method!r} is not a gRPC method path")
    return match.group(1), match.group(2)


@functools.lru_cache(maxsize=1024)  # pure, and asked on every call
def is_open(method: str) -> bool:
    """Health checking and reflection: no token, no node certificate."""
    service, _, _ = method.lstrip("/").partition("/")
    return service in OPEN_SERVICES


@functools.lru_cache(maxsize=1024)  # pure, and asked on every call
def is_read(method: str) -> bool:
    service, name = split_method(method)
    if service in (FEDERATION, TELEMETRY):
        return False
    return name in ("Status", "Stats") or name.startswith(("Get", "List", "Watch"))


@functools.lru_cache(maxsize=1024)  # pure, and asked on every call
def needs_request(method: str) -> bool:
    """Whether ``authorize`` must see the request (the machine's asset, the actor)."""
    return split_method(method)[0] == TELEMETRY or stamps(method)


def authorize_role(claims: Claims, method: str) -> None:
    """The part of the policy that does not depend on the request."""
    service, name = split_method(method)
    path = f"{service}/{name}"

    def deny(why: str) -> PermissionDenied:
        return PermissionDenied(f"role {claims.role} may not call {path}: {why}")

    if claims.role == NODE:
        raise deny("node is for federation peers, which present a node certificate, not a token")
    if path == FEDERATION_STATUS and claims.role == OPS:
        return
    if service == FEDERATION:
        raise deny("the federation API is for regional nodes only (node certificate)")
    if service == TELEMETRY:
        if claims.role != MACHINE:
            raise deny("telemetry is sent by machines only")
        return
    if claims.role == MACHINE:
        raise deny("a machine token only sends telemetry for its own asset")
    if is_read(method):
        if claims.role in READERS:
            return
        raise deny(f"{claims.role} may not read")
    if path == ACK_HANDOFF:
        if claims.role in (ONCALL, AGENT):
            return
        raise deny("handoffs are acknowledged by on-call engineers and agents")
    if service in (DESK, SUN, CONTRACTS):
        if claims.role == AGENT:
            return
        if claims.role == OPS:
            raise deny("ops is read-only")
        raise deny(f"changes are made by agents; {claims.role} only reads tickets and queues")
    if claims.role == OPS:
        raise deny("ops is read-only")
    raise deny("no rule allows it")


@functools.lru_cache(maxsize=4096)
def _role_denial(role: str, method: str) -> str | None:
    """``authorize_role`` remembered per (role, method): it reads nothing else."""
    try:
        authorize_role(Claims(role), method)
    except PermissionDenied as exc:
        return str(exc)
    return None


def check_role(claims: Claims, method: str) -> None:
    denial = _role_denial(claims.role, method)
    if denial is not None:
        raise PermissionDenied(denial)


def authorize(claims: Claims, method: str, request: object | None = None) -> None:
    """Raise ``PermissionDenied`` unless the caller with ``claims`` may make this call."""
    check_role(claims, method)
    if stamps(method):
        if request is None:
            raise PermissionDenied(f"{method} is checked against its request; none was given")
        stamp_actor(claims.subject, method, request)
    if split_method(method)[0] == TELEMETRY:
        if request is None:
            raise PermissionDenied(f"{method} is checked against its request; none was given")
        asset = getattr(request, "asset", None)
        if not isinstance(asset, str) or not asset:
            raise PermissionDenied(f"{method} needs the request's asset; it has none")
        if asset != claims.asset:
            raise PermissionDenied(
                f"machine {claims.asset!r} may not send telemetry for asset {asset!r}: "
                "a machine speaks only for its own asset"
            )


# ----- interceptor ------------------------------------------------------------------------

Behavior = Callable[..., Any]


class AuthInterceptor(aio.ServerInterceptor):
    """Applies the policy to every call; put it first in the server's interceptors.

    ``require_tokens=False`` lets calls without a token through (claims ``None``) during a
    migration; a token that is present is still verified, and Federation still requires
    a node certificate. With a ``limiter``, every write is charged to its caller.

    Streamed requests are checked one by one as the handler iterates them; a handler of
    a request-checked service (Telemetry) must read its requests through the iterator it
    is given, not ``context.read()``.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        require_tokens: bool = True,
        clock: Clock | None = None,
        limiter: RateLimiter | None = None,
        on_rate_limited: Callable[[], None] | None = None,
    ) -> None:
        check_secret(secret)
        self._secret = secret
        self._require_tokens = require_tokens
        self._clock = clock or SystemClock()
        self._limiter = limiter
        self._on_rate_limited = on_rate_limited
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        # Verified tokens: an HMAC, two base64 decodings and a JSON parse saved per call.
        # Expiry is still checked on every use; only genuine tokens are kept.
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        guarded = self._handlers[method] = self.wrap_handler(method, handler)
        return guarded

    def wrap_handler(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The guard of ``method``, also applied once at registration (``node.handlers``).

        One guarded handler per method: the gate reads each call's metadata from its
        context, so nothing is rebuilt per call.
        """
        return handler if is_open(method) else _guarded(handler, _Gate(self, method))

    def admit(
        self, method: str, metadata: tuple[Any, ...], context: aio.ServicerContext
    ) -> tuple[Claims | None, str | None]:
        """Who is calling, and may they call ``method`` at all: (claims, peer region)."""
        service, _ = split_method(method)
        if service == FEDERATION:
            region = region_of_peer(context.auth_context())
            if region is None and method[1:] == FEDERATION_STATUS and _has_token(metadata):
                claims = self._claims(method, metadata)
                assert claims is not None
                check_role(claims, method)  # ops may read a node's status
                return claims, None
            if region is None:
                raise PermissionDenied(
                    f"{method[1:]} is for regional nodes only: the caller did not present "
                    "a node certificate of this federation"
                )
            return None, region
        claims = self._claims(method, metadata)
        if claims is not None:
            check_role(claims, method)
        if self._limiter is not None and not is_read(method):
            try:
                self._limiter.check(claims.caller if claims else _peer_host(context))
            except RateLimited:
                if self._on_rate_limited is not None:
                    self._on_rate_limited()
                raise
        return claims, None

    def _claims(self, method: str, metadata: tuple[Any, ...]) -> Claims | None:
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            if self._require_tokens:
                raise Unauthenticated(
                    f"{method[1:]} needs a token: send 'authorization: Bearer <token>' "
                    "(get one with `sundesk tokens issue`)"
                )
            return None
        if len(values) > 1:
            raise Unauthenticated("send one authorization header, not several")
        value = values[0]
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        return self._verify(token.strip())

    def _verify(self, token: str) -> Claims:
        now = self._clock.now()
        claims = self._verified.get(token)
        if claims is not None and (claims.expires_at is None or epoch(now) < claims.expires_at):
            self._verified.move_to_end(token)
            return claims
        claims = verify_token(self._secret, token, now)
        self._verified[token] = claims
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return claims


def _has_token(metadata: tuple[Any, ...]) -> bool:
    return any(key.lower() == "authorization" for key, _ in metadata)


def _peer_host(context: aio.ServicerContext) -> str:
    peer = context.peer() or "unknown"
    host = peer.rpartition(":")[0] or peer
    return f"peer:{host}"


async def _refuse(context: aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, SundeskError):
        await context.abort(status_of(exc), str(exc))
    incident = uuid.uuid4().hex[:12]
    log.error("authorization failed unexpectedly %s", incident, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error {incident}; see the node's log")


@dataclass(frozen=True)
class _Gate:
    """One call's checks, run inside the handler where the context and request exist."""

    auth: AuthInterceptor
    method: str

    async def enter(self, arg: Any, context: aio.ServicerContext, stream_in: bool) -> Any:
        """Admit the caller and check the request; return what the handler should get."""
        try:
            metadata = tuple(context.invocation_metadata() or ())
            claims, region = self.auth.admit(self.method, metadata, context)
        except Exception as exc:
            await _refuse(context, exc)
            raise
        # Each RPC runs in its own task, so these stay within this call.
        current_claims.set(claims)
        current_peer_region.set(region)
        if region is not None and stream_in:
            return self._claimed_by(region, arg, context)
        if claims is None or not needs_request(self.method) or isinstance(arg, MalformedRequest):
            return arg  # a malformed request is refused by the error interceptor
        if stream_in:
            return self._checked(claims, arg, context)
        await self._check(claims, arg, context)
        return arg

    async def _check(self, claims: Claims, request: Any, context: aio.ServicerContext) -> None:
        try:
            authorize(claims, self.method, request)
        except Exception as exc:
            await _refuse(context, exc)
            raise

    async def _claimed_by(
        self, region: str, requests: AsyncIterator[Any], context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """A peer pulls as the region its certificate names, never as another."""
        async for request in requests:
            claimed = getattr(request, "region", region)
            if claimed != region:
                await _refuse(
                    context,
                    PermissionDenied(
                        f"{self.method[1:]}: the caller's node certificate is {region}'s, "
                        f"but it claims to be {claimed!r}; a node pulls as itself only"
                    ),
                )
            yield request

    async def _checked(
        self, claims: Claims, requests: AsyncIterator[Any], context: aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if not isinstance(request, MalformedRequest):
                await self._check(claims, request, context)
            yield request


def _guarded(handler: grpc.RpcMethodHandler, gate: _Gate) -> grpc.RpcMethodHandler:
    def wrap(behavior: Behavior, stream_in: bool) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def stream(arg: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                arg = await gate.enter(arg, context, stream_in)
                async for item in behavior(arg, context):
                    yield item

            return stream

        async def call(arg: Any, context: aio.ServicerContext) -> Any:
            arg = await gate.enter(arg, context, stream_in)
            result = behavior(arg, context)
            return await result if inspect.isawaitable(result) else result

        return call

    kinds = (
        (handler.unary_unary, False, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, False, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, True, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, True, grpc.stream_stream_rpc_method_handler),
    )
    for behavior, stream_in, make in kinds:
        if behavior is not None:
            return make(  # type: ignore[operator]
                wrap(behavior, stream_in),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


__all__ = [
    "ISSUABLE_ROLES",
    "ROLES",
    "AuthInterceptor",
    "Claims",
    "authorize",
    "authorize_role",
    "current_claims",
    "current_peer_region",
    "is_open",
    "is_read",
    "issue_token",
    "verify_token",
]
