"""The session's calls made for the daemon (reports, logs) when the session closes its
channel under them: real grpc.aio against a listener that never answers."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from agent.session import _unless_closed


async def _hanging_call() -> tuple[grpc.aio.Channel, asyncio.Task[None], socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{srv.getsockname()[1]}")
    call = channel.unary_unary("/ovnet.test.Nobody/Answers")
    task = asyncio.create_task(_unless_closed(call(b"", timeout=10)))
    await asyncio.sleep(0.2)  # the call is under way
    assert not task.done()
    return channel, task, srv


def test_a_call_whose_channel_closes_raises_connection_error() -> None:
    async def go() -> None:
        channel, task, srv = await _hanging_call()
        await channel.close()  # what the session does when its manager goes away
        with pytest.raises(ConnectionError, match="session with the manager closed"):
            await task
        srv.close()

    asyncio.run(go())


def test_a_cancelled_caller_is_still_cancelled() -> None:
    async def go() -> None:
        channel, task, srv = await _hanging_call()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        await channel.close()
        srv.close()

    asyncio.run(go())


def test_the_gossip_view_rides_a_heartbeat_when_it_changed_or_every_report_period() -> None:
    from agent.session import REPORT_S, gossip_report
    from proto import objects_pb2 as pb

    def view(members: int, packets: int) -> pb.GossipStatus:
        st = pb.GossipStatus(packets_in=packets, updated_ms=packets)
        for i in range(members):
            st.members.add(node_id=f"n{i}", addr=f"198.51.100.{i + 1}:7946", state="alive")
        return st

    r = gossip_report()
    assert r.due(view(2, 1), 0.0), "the first beat carries it"
    assert not r.due(view(2, 50), 1.0), "only counters moved"
    assert r.due(view(3, 60), 2.0), "a member joined"
    assert not r.due(view(3, 70), 2.0 + REPORT_S - 0.1)
    assert r.due(view(3, 80), 2.0 + REPORT_S), "refreshed every report period"
    r.sent = None  # a beat failed
    assert r.due(view(3, 90), 2.0 + REPORT_S + 1)
