"""The agent's end of the `ovnet-cni` plugin: attach through the manager, build, release.

An ADD asks the manager for an attachment (the address is the manager's to give, as for a
task), then waits until a pass of the daemon has built the veth into the container's namespace
(the attachment comes back in the node's assignment set, so the daemon builds it exactly as it
rebuilds it after a restart: there is one way in). A DEL takes the attachment out of what the
daemon builds at once, waits for that pass, and then tells the manager; when no manager
answers, the release is queued (kept on disk, so an agent restarted meanwhile still leaves the
attachment out and still sends it) and sent once one does: DEL never fails for want of a
manager, and the address is freed later rather than leaked. An attachment whose namespace has
vanished (its runtime died without a DEL) is released the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import grpc

from agent.cni.protocol import (
    ATTACH_REFUSED,
    DECODE_FAILURE,
    INVALID_CONFIG,
    IO_FAILURE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    Answer,
    Endpoint,
    ProtocolError,
    Request,
)
from agent.model import endpoint_mac
from agent.session import Assignments
from osutil.files import atomic_write
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

RELEASES_FILE = "cni-releases.json"
# How long an ADD waits for the daemon to build its interface, and a DEL for it to go.
BUILD_TIMEOUT = 30.0
MAX_REQUEST = 64 * 1024

# What the plugin reports for the manager's answers: a refusal of the request as given is the
# configuration's fault (7) or the cluster's (100); no manager is a reason to try again (11).
_CODES = {
    grpc.StatusCode.NOT_FOUND: INVALID_CONFIG,
    grpc.StatusCode.INVALID_ARGUMENT: INVALID_CONFIG,
    grpc.StatusCode.FAILED_PRECONDITION: ATTACH_REFUSED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ATTACH_REFUSED,
    grpc.StatusCode.ALREADY_EXISTS: ATTACH_REFUSED,
    grpc.StatusCode.PERMISSION_DENIED: ATTACH_REFUSED,
    grpc.StatusCode.UNAVAILABLE: TRY_AGAIN_LATER,
    grpc.StatusCode.DEADLINE_EXCEEDED: TRY_AGAIN_LATER,
}


class AttachSession(Protocol):
    """What the server uses of the agent's session (agent/session.py)."""

    @property
    def assignments(self) -> Assignments: ...

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse: ...

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse: ...


def find(
    attachments: Mapping[str, pb.Attachment], container_id: str, ifname: str
) -> pb.Attachment | None:
    """The node's attachment of a container's interface, if it has one."""
    for att in attachments.values():
        if att.container_id == container_id and att.ifname == ifname:
            return att
    return None


def _release_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


class CniServer:
    def __init__(
        self,
        socket_path: str,
        session: AttachSession,
        state_dir: Path,
        *,
        mtu_of: Callable[[pb.Network], int],
        build_timeout: float = BUILD_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self.session = session
        self.state_dir = state_dir
        # The daemon's wake-up (it sets this): an ADD or DEL needs a pass now.
        self.wake: Callable[[], None] = lambda: None
        self.mtu_of = mtu_of
        self.build_timeout = build_timeout
        # Releases not yet confirmed by a manager: key (container_id/ifname) -> DetachRequest
        # fields. Kept on disk.
        self._queue: dict[str, dict[str, str]] = self._load()
        # Released at a manager, but maybe still in the assignment set for a moment.
        self._released: set[str] = set()
        self._built: dict[str, asyncio.Future[str]] = {}
        self._gone: dict[str, asyncio.Future[None]] = {}
        self._ok: set[str] = set()
        self._failed: dict[str, str] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._server: asyncio.AbstractServer | None = None

    # ------------------------------------------------------------------ the socket

    async def start(self) -> None:
        path = Path(self.socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()  # a previous agent's
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(path), limit=MAX_REQUEST
        )
        os.chmod(path, 0o600)  # runtimes run plugins as root; nobody else may attach
        log.info("CNI plugin socket at %s", path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
        if self._flushing is not None:
            self._flushing.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
                answer = await self.handle(Request.decode(line))
            except (ProtocolError, ValueError) as e:
                answer = Answer.error(DECODE_FAILURE, f"ovnet agent: bad request: {e}")
            writer.write(answer.encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            log.info("CNI plugin went away: %s", e)
        except Exception:
            log.exception("CNI request failed")
        finally:
            writer.close()

    async def handle(self, req: Request) -> Answer:
        if req.command == "ADD":
            return await self.add(req)
        if req.command == "DEL":
            return await self.delete(req)
        return self.check(req)

    # ------------------------------------------------------------------ ADD / DEL / CHECK

    async def add(self, req: Request) -> Answer:
        if not req.netns or not os.path.exists(req.netns):
            return Answer.error(
                UNKNOWN_CONTAINER, f"network namespace {req.netns or '(none)'} does not exist"
            )
        try:
            resp = await self.session.attach(
                dpb.AttachRequest(
                    network=req.network,
                    container_id=req.container_id,
                    ifname=req.ifname,
                    netns=req.netns,
                    name=req.name,
                    aliases=list(req.aliases),
                )
            )
        except ConnectionError:
            return Answer.error(
                TRY_AGAIN_LATER,
                "no manager is reachable from this host's ovnet agent: the container cannot "
                "get an address on an ovnet network now",
                "attach again once a manager answers (ovctl node ls)",
            )
        except grpc.aio.AioRpcError as e:
            code = _CODES.get(e.code(), IO_FAILURE)
            return Answer.error(code, f"ovnet manager: {e.details()}", e.code().name)
        att = resp.attachment
        # An ADD after a DEL whose release is still queued wants the attachment again.
        if self._queue.pop(_release_key(att.container_id, att.ifname), None) is not None:
            self._save()
        self._released.discard(att.meta.id)
        why = await self._await_built(att.meta.id)
        if why is None:
            return Answer.error(
                TRY_AGAIN_LATER,
                f"the ovnet agent did not build {req.ifname} within {self.build_timeout:.0f} s",
            )
        if why:
            return Answer.error(IO_FAILURE, f"cannot build {req.ifname}: {why}")
        return Answer(ok=True, endpoint=self._endpoint(att, resp.network))

    async def _await_built(self, att_id: str) -> str | None:
        """ "" once a pass built it, the reason it could not, None on a timeout."""
        fut = self._built.get(att_id)
        if fut is None or fut.done():
            fut = self._built[att_id] = asyncio.get_running_loop().create_future()
        self.wake()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.build_timeout)
        except TimeoutError:
            return None
        finally:
            if self._built.get(att_id) is fut:
                del self._built[att_id]

    async def delete(self, req: Request) -> Answer:
        att = find(self.session.assignments.attachments, req.container_id, req.ifname)
        key = _release_key(req.container_id, req.ifname)
        entry = {"container_id": req.container_id, "ifname": req.ifname}
        if att is not None:
            entry["attachment_id"] = att.meta.id
        self._queue[key] = entry
        self._save()
        if att is not None and (att.meta.id in self._ok or att.meta.id in self._failed):
            # Its veth goes in the next pass: wait for it, so the runtime tears down a
            # namespace the agent no longer uses.
            fut = self._gone.setdefault(att.meta.id, asyncio.get_running_loop().create_future())
            self.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), self.build_timeout)
        await self._send(key)
        return Answer(ok=True)

    def check(self, req: Request) -> Answer:
        att = find(self.session.assignments.attachments, req.container_id, req.ifname)
        if att is None or att.meta.id in self.detached():
            return Answer.error(
                UNKNOWN_CONTAINER,
                f"container {req.container_id} has no ovnet interface {req.ifname} on this host",
            )
        if not os.path.exists(att.netns):
            return Answer.error(UNKNOWN_CONTAINER, f"network namespace {att.netns} is gone")
        if att.meta.id not in self._ok:
            why = self._failed.get(att.meta.id, "not built yet")
            return Answer.error(IO_FAILURE, f"{req.ifname} is not in place: {why}")
        net = self.session.assignments.networks.get(att.network.network_id)
        if net is None:
            return Answer.error(IO_FAILURE, f"network {att.network.network_id} is not known here")
        return Answer(ok=True, endpoint=self._endpoint(att, net))

    def _endpoint(self, att: pb.Attachment, net: pb.Network) -> Endpoint:
        address = att.network.addresses[0]
        return Endpoint(
            attachment_id=att.meta.id,
            address=address,
            gateway=net.gateway,
            mac=endpoint_mac(address),
            mtu=self.mtu_of(net),
            netns=att.netns,
            ifname=att.ifname,
        )

    # ------------------------------------------------------------------ the daemon's side

    def detached(self) -> set[str]:
        """Attachments the daemon must leave out: released here, whether or not a manager
        has heard of it yet."""
        queued = {
            k for k, e in self._queue.items() if "attachment_id" not in e
        }  # DEL before the attachment was known here: by container and interface
        out = {e["attachment_id"] for e in self._queue.values() if "attachment_id" in e}
        for att in self.session.assignments.attachments.values():
            if _release_key(att.container_id, att.ifname) in queued:
                out.add(att.meta.id)
        return out | self._released

    def vanished(self, att: pb.Attachment) -> None:
        """Its namespace is gone without a DEL: release it (queued like a DEL)."""
        key = _release_key(att.container_id, att.ifname)
        if key in self._queue:
            return
        log.info(
            "attachment %s (%s): namespace %s is gone: releasing it",
            att.meta.id,
            att.name,
            att.netns,
        )
        self._queue[key] = {
            "attachment_id": att.meta.id,
            "container_id": att.container_id,
            "ifname": att.ifname,
        }
        self._save()

    def built(self, ok: set[str], failed: Mapping[str, str]) -> None:
        """What this pass built (and what it could not, why): answers the waiting ADDs and
        DELs, and starts sending queued releases."""
        self._ok, self._failed = set(ok), dict(failed)
        for att_id, fut in list(self._built.items()):
            if fut.done():
                continue
            if att_id in ok:
                fut.set_result("")
            elif att_id in failed:
                fut.set_result(failed[att_id])
        for att_id, gone in list(self._gone.items()):
            if att_id not in ok and att_id not in failed:
                if not gone.done():
                    gone.set_result(None)
                del self._gone[att_id]
        assigned = set(self.session.assignments.attachments)
        self._released &= assigned
        if self._queue and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        for key in list(self._queue):
            if not await self._send(key):
                return  # no manager: the next pass tries again

    async def _send(self, key: str) -> bool:
        """Tell the manager about one queued release; False when none could be told."""
        entry = self._queue.get(key)
        if entry is None:
            return True
        try:
            await self.session.detach(dpb.DetachRequest(**entry))
        except ConnectionError:
            return False
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False
            log.warning("releasing attachment %s: %s (dropped)", entry, e.details())
        if self._queue.pop(key, None) is not None:
            if "attachment_id" in entry:
                self._released.add(entry["attachment_id"])
            self._save()
            log.info("released attachment %s", entry.get("attachment_id", key))
        return True

    # ------------------------------------------------------------------ the queue on disk

    def _load(self) -> dict[str, dict[str, str]]:
        path = self.state_dir / RELEASES_FILE
        try:
            data = json.loads(path.read_bytes())
            return {
                str(k): {str(f): str(v) for f, v in e.items()}
                for k, e in data.items()
                if isinstance(e, dict)
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring the queued releases in %s: %s", path, e)
            return {}

    def _save(self) -> None:
        try:
            atomic_write(
                self.state_dir / RELEASES_FILE,
                json.dumps(self._queue, sort_keys=True).encode(),
                durable=True,
                mkdir=True,
            )
        except OSError as e:
            log.warning("cannot keep the queued releases on disk: %s", e)
