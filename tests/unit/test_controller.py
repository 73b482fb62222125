"""The agent's task state machine and desired data plane."""

from __future__ import annotations

import ipaddress

from agent.controller import Controller, Local, Sandbox, decide, exit_status
from agent.dataplane.xfrm import NO_ESP
from agent.desiredstate import desired_dataplane
from agent.executor.api import ExitInfo
from agent.model import HostConfig, RemoteEndpoint
from proto import objects_pb2 as pb

RUN = pb.TASK_STATE_RUNNING


def task(
    tid: str = "t1",
    state: int = pb.TASK_STATE_ASSIGNED,
    desired: int = RUN,
    nets: tuple[tuple[str, str], ...] = (("n1", "10.0.1.5/24"),),
    node: str = "node1",
    not_before: int = 0,
) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=tid),
        service_id="s1",
        service_name="web",
        slot=1,
        node_id=node,
        desired_state=desired,  # type: ignore[arg-type]
        status=pb.TaskStatus(state=state),  # type: ignore[arg-type]
        networks=[pb.NetworkAttachment(network_id=n, addresses=[a]) for n, a in nets],
        not_before_ms=not_before,
    )


def net(nid: str = "n1", subnet: str = "10.0.1.0/24", internal: bool = False) -> pb.Network:
    gw = str(next(ipaddress.IPv4Network(subnet).hosts()))
    return pb.Network(
        meta=pb.Meta(id=nid),
        spec=pb.NetworkSpec(name=nid, internal=internal),
        subnet=subnet,
        gateway=gw,
        vni=4096,
    )


def test_new_task_walks_preparing_starting_running() -> None:
    t = task()
    lo = Local(reported=t.status.state)
    d = decide({"t1": t}, {"t1": lo}, 1000)
    assert d.reports["t1"].state == pb.TASK_STATE_PREPARING
    assert d.sandboxes == {"t1"} and d.start == []
    lo.reported = pb.TASK_STATE_PREPARING
    lo.sandbox = Sandbox.READY
    d = decide({"t1": t}, {"t1": lo}, 1000)
    assert d.start == ["t1"] and d.reports["t1"].state == pb.TASK_STATE_STARTING
    lo.reported, lo.pid = pb.TASK_STATE_STARTING, 4242
    d = decide({"t1": t}, {"t1": lo}, 1000)
    assert d.start == [] and d.reports["t1"].state == RUN and d.reports["t1"].pid == 4242
    lo.reported = RUN
    d = decide({"t1": t}, {"t1": lo}, 1000)
    assert d.reports == {} and d.sandboxes == {"t1"}


def test_exit_codes_give_complete_or_failed_and_the_sandbox_goes() -> None:
    t = task(state=RUN)
    clean = Local(reported=RUN, exited=True, exit_code=0)
    d = decide({"t1": t}, {"t1": clean}, 5)
    assert d.reports["t1"].state == pb.TASK_STATE_COMPLETE and d.sandboxes == set()
    bad = Local(reported=RUN, exited=True, exit_code=3, exit_error="exit status 3")
    d = decide({"t1": t}, {"t1": bad}, 5)
    st = d.reports["t1"]
    assert (st.state, st.exit_code, st.err) == (pb.TASK_STATE_FAILED, 3, "exit status 3")
    # Once reported, a finished task stays finished: no restart here, nothing more to say.
    bad.reported = pb.TASK_STATE_FAILED
    d = decide({"t1": t}, {"t1": bad}, 6)
    assert d.reports == {} and d.start == [] and d.sandboxes == set()


def test_shutdown_stops_the_process_then_reports_shutdown() -> None:
    t = task(state=RUN, desired=pb.TASK_STATE_SHUTDOWN)
    lo = Local(reported=RUN, pid=99)
    d = decide({"t1": t}, {"t1": lo}, 1)
    assert d.stop == ["t1"] and d.sandboxes == {"t1"} and d.reports == {}
    lo.pid, lo.exited, lo.exit_code = 0, True, 143
    d = decide({"t1": t}, {"t1": lo}, 2)
    assert d.stop == [] and d.sandboxes == set()
    assert d.reports["t1"].state == pb.TASK_STATE_SHUTDOWN


def test_start_and_network_failures_are_reported_with_their_reason() -> None:
    t = task()
    d = decide({"t1": t}, {"t1": Local(start_error="exec: 'nope': not found")}, 1)
    assert d.reports["t1"].state == pb.TASK_STATE_FAILED
    assert "nope" in d.reports["t1"].err
    d = decide(
        {"t1": t}, {"t1": Local(sandbox=Sandbox.FAILED, sandbox_error="veth: File exists")}, 1
    )
    assert d.reports["t1"].err == "veth: File exists" and d.sandboxes == set()


def test_restart_delay_holds_the_start() -> None:
    t = task(not_before=2000)
    d = decide({"t1": t}, {"t1": Local(sandbox=Sandbox.READY)}, 1000)
    assert d.start == [] and d.sandboxes == set()
    assert d.reports["t1"].state == pb.TASK_STATE_ACCEPTED
    d = decide({"t1": t}, {"t1": Local(sandbox=Sandbox.READY)}, 2000)
    assert d.start == ["t1"]


def test_a_running_task_whose_process_is_lost_fails() -> None:
    t = task(state=RUN)
    d = decide({"t1": t}, {"t1": Local(reported=RUN)}, 1)
    assert d.reports["t1"].state == pb.TASK_STATE_FAILED and "gone" in d.reports["t1"].err


def test_unassigned_leftovers_are_stopped_then_forgotten() -> None:
    d = decide({}, {"old": Local(pid=7)}, 1)
    assert d.stop == ["old"] and d.forget == []
    d = decide({}, {"old": Local()}, 1)
    assert d.forget == ["old"] and d.stop == []


def test_desired_dataplane_builds_networks_only_for_local_sandboxes() -> None:
    host = HostConfig(vtep=ipaddress.IPv4Address("198.51.100.11"))
    tasks = {
        "t1": task("t1", nets=(("n1", "10.0.1.5/24"), ("n2", "10.0.2.5/24"))),
        "t2": task("t2", nets=(("n2", "10.0.2.6/24"),)),
        "t3": task("t3", nets=(("n9", "10.0.9.5/24"),)),
    }
    networks = {"n1": net("n1"), "n2": net("n2", "10.0.2.0/24", internal=True)}
    ip = ipaddress.IPv4Address
    eps = {
        "n2": [
            RemoteEndpoint("n2", ip("10.0.2.9"), ip("198.51.100.12")),
            # Our own VTEP (a stale view): never a remote entry.
            RemoteEndpoint("n2", ip("10.0.2.10"), ip("198.51.100.11")),
            # An address a local task holds (a dead host's stale record): never sent away.
            RemoteEndpoint("n2", ip("10.0.2.6"), ip("198.51.100.13")),
        ]
    }
    desired, problems = desired_dataplane(host, tasks, networks, eps, {"t2", "t3"})
    assert set(desired.networks) == {"n2"}  # n1 has no sandbox here: not built
    assert set(desired.sandboxes) == {"t2"}
    assert "n9" in problems["t3"]
    box = desired.sandboxes["t2"]
    assert box.egress is False  # its only network is internal
    assert str(box.endpoints[0].address) == "10.0.2.6/24" and box.endpoints[0].index == 0
    assert desired.remotes["n2"] == frozenset(
        {
            RemoteEndpoint(
                "n2",
                ipaddress.IPv4Address("10.0.2.9"),
                ipaddress.IPv4Address("198.51.100.12"),
            )
        }
    )
    desired, _ = desired_dataplane(host, tasks, networks, eps, {"t1"})
    assert set(desired.networks) == {"n1", "n2"} and desired.sandboxes["t1"].egress is True
    assert [e.index for e in desired.sandboxes["t1"].endpoints] == [0, 1]


def test_a_host_that_cannot_encrypt_builds_nothing_for_a_task_on_an_encrypted_network() -> None:
    tasks = {
        "t1": task("t1", nets=(("n1", "10.0.1.5/24"), ("sec", "10.0.2.5/24"))),
        "t2": task("t2", nets=(("n1", "10.0.1.6/24"),)),
    }
    secret = net("sec", "10.0.2.0/24")
    secret.spec.encrypted = True
    networks = {"n1": net("n1"), "sec": secret}
    vtep = ipaddress.IPv4Address("198.51.100.11")
    unable = HostConfig(vtep=vtep, ipsec_unavailable=NO_ESP)
    desired, problems = desired_dataplane(unable, tasks, networks, {}, {"t1", "t2"})
    assert set(desired.sandboxes) == {"t2"} and set(desired.networks) == {"n1"}
    assert problems == {
        "t1": "this host's kernel cannot encrypt (no ESP support): network sec needs IPsec"
    }
    desired, problems = desired_dataplane(HostConfig(vtep=vtep), tasks, networks, {}, {"t1"})
    assert problems == {} and desired.networks["sec"].encrypted


# ---------------------------------------------------------------------- Controller's events


def test_controller_records_exits_and_start_failures() -> None:
    c = Controller()
    c.assigned({"t1": task(state=pb.TASK_STATE_STARTING)})
    c.started("t1", 42)
    assert c.running() == {"t1": 42}
    c.exited("t1", ExitInfo(3, None, "exit status 3"), now_ms=500)
    lo = c.local["t1"]
    assert (lo.pid, lo.exited, lo.exit_code, lo.exit_error, lo.exited_ms) == (
        0,
        True,
        3,
        "exit status 3",
        500,
    )
    c.started("t1", 43)
    c.exited("t1", ExitInfo(1, None, "exec: 'x': not found", start_failed=True), now_ms=600)
    assert c.local["t1"].start_error == "exec: 'x': not found"
    assert c.local["t1"].exited_ms == 500  # a start failure is no exit


def test_controller_restart_forgets_the_last_run_and_counts() -> None:
    c = Controller()
    c.assigned({"t1": task()})
    c.exited("t1", ExitInfo(2, None, "exit status 2"), now_ms=1)
    c.local["t1"].unhealthy = "down"
    c.restarting("t1")
    lo = c.local["t1"]
    assert not lo.exited and lo.exit_code is None and lo.exit_error == "" and lo.unhealthy == ""
    assert lo.local_restarts == 1


def test_controller_sandboxes_built() -> None:
    c = Controller()
    c.assigned({"t1": task("t1"), "t2": task("t2"), "t3": task("t3")})
    changed = c.sandboxes_built({"t1", "t2"}, {"t1"}, {"t2": "no address"})
    assert changed
    assert c.local["t1"].sandbox is Sandbox.READY
    assert (c.local["t2"].sandbox, c.local["t2"].sandbox_error) == (Sandbox.FAILED, "no address")
    assert c.local["t3"].sandbox is Sandbox.ABSENT
    assert not c.sandboxes_built({"t1", "t2"}, {"t1"}, {"t2": "no address"})  # nothing new


def test_controller_health_verdicts() -> None:
    c = Controller()
    c.assigned({"t1": task()})
    c.not_checked("t1", 100, serving=True)
    c.not_checked("t1", 200, serving=True)
    assert c.local["t1"].ready_ms == 100  # ready since it was first seen serving
    c.not_checked("t1", 300, serving=False)
    assert c.local["t1"].ready_ms == 0
    assert c.checked("t1", pb.TASK_HEALTH_HEALTHY, 250, "") == ""
    assert c.checked("t1", pb.TASK_HEALTH_UNHEALTHY, 0, "boom") == "boom"
    assert c.checked("t1", pb.TASK_HEALTH_UNHEALTHY, 0, "again") == ""  # said once
    assert c.local["t1"].unhealthy == "boom"
    assert exit_status(c.local["t1"], 1).err == "unhealthy: boom"


def test_controller_reported_and_forget() -> None:
    c = Controller()
    c.assigned({"t1": task()})
    run = pb.TaskStatus(state=RUN, health=pb.TASK_HEALTH_HEALTHY, ready_ms=7)
    c.reported({"t1": run, "gone": run})
    assert c.local["t1"].reported == RUN
    assert c.local["t1"].reported_health == (pb.TASK_HEALTH_HEALTHY, 7)
    d = c.decide({}, 1000)
    assert d.forget == ["t1"]
    c.forget("t1")
    assert c.local == {} and c.known_tasks() == {}
