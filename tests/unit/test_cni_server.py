"""The agent's end of the CNI plugin (agent/cni/server.py) with a fake session and no kernel.

What is checked: an ADD answers only once a pass has built the interface (or says why it could
not), the manager's refusals become CNI codes, a DEL is queued on disk while no manager
answers and sent once one does, and what the daemon must leave out meanwhile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from agent.cni import protocol
from agent.cni.server import CniServer
from agent.session import Assignments
from proto import dispatcher_pb2 as dpb
from proto import objects_pb2 as pb

NET = pb.Network(
    meta=pb.Meta(id="net1"),
    spec=pb.NetworkSpec(name="appnet", attachable=True),
    subnet="10.7.0.0/24",
    gateway="10.7.0.1",
    vni=4100,
)


class RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeSession:
    def __init__(self) -> None:
        self.assignments = Assignments()
        self.assignments.networks[NET.meta.id] = NET
        self.down = False
        self.refuse: RpcError | None = None
        self.detached: list[dpb.DetachRequest] = []
        self.attached: list[dpb.AttachRequest] = []

    async def attach(self, req: dpb.AttachRequest) -> dpb.AttachResponse:
        if self.down:
            raise ConnectionError("no session with a manager")
        if self.refuse is not None:
            raise self.refuse
        self.attached.append(req)
        att = pb.Attachment(
            meta=pb.Meta(id=f"att-{req.container_id}"),
            container_id=req.container_id,
            ifname=req.ifname,
            netns=req.netns,
            name=req.name,
            network=pb.NetworkAttachment(network_id=NET.meta.id, addresses=["10.7.0.9/24"]),
        )
        # The manager's assignment set carries it to the agent.
        self.assignments.attachments[att.meta.id] = att
        return dpb.AttachResponse(attachment=att, network=NET)

    async def detach(self, req: dpb.DetachRequest) -> dpb.DetachResponse:
        if self.down:
            raise ConnectionError("no session with a manager")
        self.detached.append(req)
        self.assignments.attachments.pop(req.attachment_id, None)
        return dpb.DetachResponse(released=True)


def server(tmp_path: Path, session: FakeSession, timeout: float = 2.0) -> CniServer:
    return CniServer(
        str(tmp_path / "cni.sock"), session, tmp_path, mtu_of=lambda _: 1450, build_timeout=timeout
    )


def add(netns: str, cid: str = "c1") -> protocol.Request:
    return protocol.Request("ADD", "appnet", cid, "eth0", netns, "web1", ("www",))


def delete(cid: str = "c1") -> protocol.Request:
    return protocol.Request("DEL", "appnet", cid, "eth0")


async def builds(srv: CniServer, failed: dict[str, str] | None = None) -> None:
    """A daemon pass: what is assigned and not released is built (or fails as given)."""
    await asyncio.sleep(0.01)
    wanted = set(srv.session.assignments.attachments) - srv.detached()
    bad = failed or {}
    srv.built(wanted - bad.keys(), bad)


def test_add_answers_once_a_pass_built_it(tmp_path: Path) -> None:
    async def go() -> None:
        session = FakeSession()
        srv = server(tmp_path, session)
        woken = asyncio.Event()
        srv.wake = woken.set
        answer = asyncio.create_task(srv.handle(add(str(tmp_path))))
        await woken.wait()
        assert not answer.done()
        await builds(srv)
        got = await answer
        assert got.ok and got.endpoint is not None
        assert got.endpoint.address == "10.7.0.9/24"
        assert got.endpoint.gateway == "10.7.0.1"
        assert got.endpoint.mac == "02:42:0a:07:00:09"
        assert got.endpoint.mtu == 1450
        assert got.endpoint.nameservers == ("127.0.0.11",)
        assert session.attached[0].aliases == ["www"]
        # CHECK finds it built.
        check = srv.handle(protocol.Request("CHECK", "appnet", "c1", "eth0", str(tmp_path)))
        assert (await check).ok

    asyncio.run(go())


def test_add_says_why_the_interface_could_not_be_built(tmp_path: Path) -> None:
    async def go() -> None:
        srv = server(tmp_path, FakeSession())
        answer = asyncio.create_task(srv.handle(add(str(tmp_path))))
        await builds(srv, {"att-c1": "CreateVeth failed: File exists"})
        got = await answer
        assert (got.ok, got.code) == (False, protocol.IO_FAILURE)
        assert "File exists" in got.msg

    asyncio.run(go())


@pytest.mark.parametrize(
    ("code", "cni_code"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, protocol.ATTACH_REFUSED),
        (grpc.StatusCode.NOT_FOUND, protocol.INVALID_CONFIG),
        (grpc.StatusCode.UNAVAILABLE, protocol.TRY_AGAIN_LATER),
    ],
)
def test_a_refusal_of_the_manager_becomes_a_cni_error_with_its_words(
    tmp_path: Path, code: grpc.StatusCode, cni_code: int
) -> None:
    session = FakeSession()
    session.refuse = RpcError(code, "network 'plain' is not attachable")
    got = asyncio.run(server(tmp_path, session).handle(add(str(tmp_path))))
    assert (got.ok, got.code) == (False, cni_code)
    assert got.msg == "ovnet manager: network 'plain' is not attachable"


def test_add_without_a_namespace_or_a_manager(tmp_path: Path) -> None:
    session = FakeSession()
    got = asyncio.run(server(tmp_path, session).handle(add(str(tmp_path / "gone"))))
    assert (got.code, got.msg) == (
        protocol.UNKNOWN_CONTAINER,
        f"network namespace {tmp_path / 'gone'} does not exist",
    )
    session.down = True
    got = asyncio.run(server(tmp_path, session).handle(add(str(tmp_path))))
    assert got.code == protocol.TRY_AGAIN_LATER
    assert "no manager is reachable" in got.msg
    assert not session.attached


def test_del_while_no_manager_answers_is_queued_on_disk_and_sent_later(tmp_path: Path) -> None:
    async def go() -> None:
        session = FakeSession()
        srv = server(tmp_path, session)
        answer = asyncio.create_task(srv.handle(add(str(tmp_path))))
        await builds(srv)
        assert (await answer).ok
        session.down = True
        deleting = asyncio.create_task(srv.handle(delete()))
        await builds(srv)  # the pass that removes the veth
        assert (await deleting).ok
        assert srv.detached() == {"att-c1"}
        # A restarted agent still leaves it out, and still owes the release.
        again = server(tmp_path, session)
        assert again.detached() == {"att-c1"}
        session.down = False
        await builds(again)
        await asyncio.sleep(0.05)
        assert [d.attachment_id for d in session.detached] == ["att-c1"]
        # Left out until the manager's assignment set no longer has it.
        assert again.detached() == {"att-c1"}
        await builds(again)
        assert again.detached() == set()
        assert not (tmp_path / "cni-releases.json").read_text().strip("{}")
        # A second DEL of the same container is no error.
        assert (await again.handle(delete())).ok

    asyncio.run(go())


def test_a_vanished_namespace_is_released_like_a_del(tmp_path: Path) -> None:
    async def go() -> None:
        session = FakeSession()
        srv = server(tmp_path, session)
        answer = asyncio.create_task(srv.handle(add(str(tmp_path))))
        await builds(srv)
        assert (await answer).ok
        srv.vanished(session.assignments.attachments["att-c1"])
        assert srv.detached() == {"att-c1"}
        await builds(srv)
        await asyncio.sleep(0.05)
        assert [d.attachment_id for d in session.detached] == ["att-c1"]

    asyncio.run(go())


def test_the_socket_answers_a_garbled_request_with_a_decode_error(tmp_path: Path) -> None:
    async def go() -> None:
        srv = server(tmp_path, FakeSession())
        await srv.start()
        try:
            reader, writer = await asyncio.open_unix_connection(srv.socket_path)
            writer.write(b"{not json\n")
            await writer.drain()
            got = protocol.Answer.decode(await reader.readline())
            writer.close()
        finally:
            await srv.close()
        assert (got.ok, got.code) == (False, protocol.DECODE_FAILURE)
        assert not Path(srv.socket_path).exists()

    asyncio.run(go())


@pytest.mark.parametrize(
    "line",
    [
        b'{"command":"ADD","network":"n","container_id":"c","ifname":"e","aliases":"web"}',
        b'{"command":"RUN","network":"n","container_id":"c","ifname":"e"}',
        b'{"command":"ADD","network":7,"container_id":"c","ifname":"e"}',
        b'["ADD"]',
    ],
)
def test_a_request_off_the_protocol_is_refused_not_guessed(line: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.Request.decode(line)
