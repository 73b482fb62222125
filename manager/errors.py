"""User-facing errors, each bound to the gRPC status it travels as.

Pure cores (allocator, scheduler, validation) raise these; the gRPC edge turns them into a status
with the message unchanged, so the message must be something a person can act on.
"""

from __future__ import annotations

import grpc


class OvnetError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(OvnetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(OvnetError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(OvnetError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(OvnetError):
    """The request is well formed but conflicts with what exists (in use, overlapping, taken)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(OvnetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(OvnetError):
    """Not the leader, or etcd unreachable: the caller may retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(OvnetError):
    """The caller did not prove who it is: no usable certificate, or a join token that is not
    (or no longer) valid."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(OvnetError):
    """The caller is known but may not do this: wrong role, a removed node, another node's ID."""

    code = grpc.StatusCode.PERMISSION_DENIED
