"""The manager's gRPC edge: every RPC handler, built from the service descriptors.

Handlers are not written out one by one, so the rules every RPC follows live in one place:
- user errors (OvnetError) become their gRPC status with the message unchanged; anything else
  is a bug and is logged, and only then reported as INTERNAL;
- on the control listener, the caller is who its client certificate says (CN = node ID,
  OU = role), and may call only the methods whose `roles` option names its role
  (manager/ca/authz.py); a removed node's certificate is refused; client streams are checked
  message by message;
- the body is ``snake_case(method)`` on whatever object the `Backend` says serves the call
  here; when it names none, the call is forwarded to the leader (ovctl can talk to any
  manager);
- the join listener serves only NodeCA.IssueNodeCertificate, and refuses everything else with
  a message saying where to go instead.

What serves which call, who the caller is and where the leader is belong to the manager
(manager/server.py), which this module reaches only through `Backend`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from manager.ca import authz
from manager.ca.authz import Peer
from manager.errors import OvnetError
from proto import ca_pb2, control_pb2, control_pb2_grpc, dispatcher_pb2

log = logging.getLogger(__name__)

# Every service a manager serves, with the module holding its descriptor.
SERVICES: tuple[tuple[str, Any], ...] = (
    ("Control", control_pb2),
    ("Dispatcher", dispatcher_pb2),
    ("NodeCA", ca_pb2),
)
# The only method the join listener serves: a caller there has no certificate yet.
JOIN_METHOD = "NodeCA.IssueNodeCertificate"


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def service_roles() -> dict[str, tuple[str, ...]]:
    """Roles of every served method; ValueError if one declares none (see authz)."""
    return authz.service_roles(m.DESCRIPTOR.services_by_name[n] for n, m in SERVICES)


class Backend(Protocol):
    """What the edge needs from the manager behind it."""

    roles: dict[str, tuple[str, ...]]
    removed: set[str]
    join_listen: str

    @property
    def public_addr(self) -> str:
        """The control listener's address as callers reach it (for the join refusal)."""
        ...

    def peer(self, context: grpc.aio.ServicerContext) -> Peer:
        """The caller, from its client certificate (OvnetError when there is none)."""
        ...

    def target(self, service: str, name: str) -> Any:
        """The object serving this call here, or None: forward it to the leader."""
        ...

    async def leader_stub(self) -> control_pb2_grpc.ControlStub:
        """A Control stub on the leader (Unavailable when there is none)."""
        ...


class RpcEdge:
    """The generic handlers of both listeners, over one `Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._wants_peer: dict[tuple[type, str], bool] = {}

    def handlers(self, *, join: bool) -> list[grpc.GenericRpcHandler]:
        """Every service's handlers, for the join listener (`join`) or the control listener."""
        return [self._handlers(name, module, join=join) for name, module in SERVICES]

    def _authorize(self, peer: Peer, method: str, request: Any) -> None:
        """Check the caller against the method's roles and `request`'s node ID; an empty node
        ID on Register means the caller's own."""
        node_id = ""
        if isinstance(request, Message) and "node_id" in request.DESCRIPTOR.fields_by_name:
            if method == "Dispatcher.Register" and not request.node_id:  # type: ignore[attr-defined]
                request.node_id = peer.node_id  # type: ignore[attr-defined]
            node_id = request.node_id  # type: ignore[attr-defined]
        b = self.backend
        authz.authorize(peer, method, b.roles[method], b.removed, node_id)

    def _checked_stream(
        self, peer: Peer, method: str, requests: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """A client stream whose every message is authorized like a unary request."""

        async def gen() -> AsyncIterator[Any]:
            async for m in requests:
                self._authorize(peer, method, m)
                yield m

        return gen()

    def _call(self, impl: Any, attr: str, request: Any, peer: Peer) -> Any:
        """impl.attr(request), with `peer=` for the bodies that take the caller."""
        key = (type(impl), attr)
        fn = getattr(impl, attr)
        wants = self._wants_peer.get(key)
        if wants is None:
            wants = self._wants_peer[key] = "peer" in inspect.signature(fn).parameters
        return fn(request, peer=peer) if wants else fn(request)

    # ------------------------------------------------------------------ handlers

    def _handlers(self, service: str, module: Any, *, join: bool) -> grpc.GenericRpcHandler:
        desc = module.DESCRIPTOR.services_by_name[service]
        handlers = {}
        for method in desc.methods:
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            full = f"{service}.{method.name}"
            if join and full != JOIN_METHOD:
                fn = self._join_refusal(full, method.server_streaming)
            else:
                # A client-streaming body gets the request iterator in place of a request, so
                # the unary wrapper serves it too.
                fn = self._make_handler(
                    service, method.name, method.server_streaming, method.client_streaming, join
                )
            kw = {
                "request_deserializer": req_cls.FromString,
                "response_serializer": resp_cls.SerializeToString,
            }
            if method.server_streaming:
                handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **kw)
            elif method.client_streaming:
                handlers[method.name] = grpc.stream_unary_rpc_method_handler(fn, **kw)
            else:
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **kw)
        return grpc.method_handlers_generic_handler(f"ovnet.v1.{service}", handlers)

    def _join_refusal(self, method: str, server_streaming: bool) -> Any:
        message = (
            f"no client certificate: {self.backend.join_listen} is the join listener, which serves "
            f"only {JOIN_METHOD}; call {method} on {self.backend.public_addr} with this "
            "cluster's certificate (join the cluster first)"
        )

        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(
            _request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield None  # pragma: no cover (abort raises)

        return refuse_stream if server_streaming else refuse

    def _make_handler(
        self,
        service: str,
        name: str,
        server_streaming: bool,
        client_streaming: bool,
        join: bool,
    ) -> Any:
        attr = snake(name)
        full = f"{service}.{name}"
        anonymous = Peer(node_id="", role=authz.ANONYMOUS)

        def admit(request: Any, context: grpc.aio.ServicerContext) -> tuple[Peer, Any]:
            """The caller, and the request as the body gets it (client streams checked per
            message)."""
            if join:
                return anonymous, request
            peer = self.backend.peer(context)
            if client_streaming:
                authz.authorize(peer, full, self.backend.roles[full], self.backend.removed)
                return peer, self._checked_stream(peer, full, request)
            self._authorize(peer, full, request)
            return peer, request

        async def fail(context: grpc.aio.ServicerContext, e: BaseException) -> None:
            if isinstance(e, OvnetError):
                await context.abort(e.code, e.message)
            if isinstance(e, grpc.aio.AioRpcError):
                await context.abort(e.code(), e.details() or "")
            log.exception("internal error in %s", full, exc_info=e)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}: {e!r}")

        if server_streaming:

            async def stream_handler(
                request: Any, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    peer, request = admit(request, context)
                    impl = self.backend.target(service, name)
                    if impl is None:
                        stub = await self.backend.leader_stub()
                        async for item in getattr(stub, name)(request):
                            yield item
                        return
                    async for item in self._call(impl, attr, request, peer):
                        yield item
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    await fail(context, e)

            return stream_handler

        async def unary_handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                peer, request = admit(request, context)
                impl = self.backend.target(service, name)
                if impl is None:
                    stub = await self.backend.leader_stub()
                    return await getattr(stub, name)(request, timeout=30)
                return await self._call(impl, attr, request, peer)
            except asyncio.CancelledError:
                raise
            except BaseException as e:
                await fail(context, e)

        return unary_handler
