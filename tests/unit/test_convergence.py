"""manager/convergence.py: when a service's change is real on every host concerned."""

from __future__ import annotations

from manager.convergence import service_convergence
from proto import control_pb2 as cpb
from proto import objects_pb2 as pb

RUNNING = pb.TASK_STATE_RUNNING
INGRESS = "ingressnet"
APP = "appnet"


def node(node_id: str, state: int = pb.NODE_STATE_READY, **unavailable: str) -> pb.Node:
    return pb.Node(
        meta=pb.Meta(id=node_id),
        description=pb.NodeDescription(hostname=f"h-{node_id}", unavailable=unavailable),
        status=pb.NodeStatus(state=state),  # type: ignore[arg-type]
    )


def service(replicas: int = 2, *, version: int = 1, publish: bool = False) -> pb.Service:
    spec = pb.ServiceSpec(name="web")
    spec.replicated.replicas = replicas
    svc = pb.Service(meta=pb.Meta(id="svc"), spec=spec, spec_version=version)
    svc.endpoint.virtual_ips.add(network_id=APP, addr="10.1.0.2/24")
    if publish:
        svc.spec.endpoint.ports.add(
            target_port=80, published_port=8080, publish_mode=pb.PUBLISH_MODE_INGRESS
        )
        svc.endpoint.virtual_ips.add(network_id=INGRESS, addr="10.0.0.2/24")
    return svc


def task(
    task_id: str,
    node_id: str,
    *,
    service_id: str = "svc",
    slot: int = 1,
    version: int = 1,
    state: int = RUNNING,
    desired: int = RUNNING,
    ready: bool = True,
    nets: tuple[str, ...] = (APP,),
) -> pb.Task:
    return pb.Task(
        meta=pb.Meta(id=task_id),
        service_id=service_id,
        slot=slot,
        node_id=node_id,
        spec_version=version,
        desired_state=desired,  # type: ignore[arg-type]
        status=pb.TaskStatus(state=state, ready_ms=1 if ready else 0),  # type: ignore[arg-type]
        networks=[pb.NetworkAttachment(network_id=n) for n in nets],
    )


def view(*task_ids: str, mesh: bool = False, service_id: str = "svc") -> pb.ProgrammedView:
    return pb.ProgrammedView(
        services=[pb.ProgrammedService(service_id=service_id, task_ids=sorted(task_ids))],
        mesh=mesh,
    )


NODES = {n: node(n) for n in ("n1", "n2", "n3")}


def judge(svc: pb.Service, tasks: list[pb.Task], programmed: dict[str, pb.ProgrammedView],
          nodes: dict[str, pb.Node] | None = None,
          attachments: tuple[pb.Attachment, ...] = ()) -> cpb.ServiceConvergence:  # fmt: skip
    return service_convergence(
        svc, tasks, NODES if nodes is None else nodes, attachments, programmed, INGRESS
    )


def test_converged_when_every_host_with_a_task_on_its_networks_programmed_the_ready_tasks() -> None:
    tasks = [task("a", "n1"), task("b", "n2", slot=2)]
    c = judge(service(), tasks, {"n1": view("a", "b"), "n2": view("a", "b")})
    assert c.converged and c.waiting == []
    assert (c.tasks_ready, c.tasks_wanted, c.hosts_programmed, c.hosts_concerned) == (2, 2, 2, 2)


def test_a_host_that_has_not_programmed_a_new_task_holds_it_back_by_name() -> None:
    tasks = [task("a", "n1"), task("b", "n2", slot=2)]
    c = judge(service(), tasks, {"n1": view("a", "b"), "n2": view("a")})
    assert not c.converged
    assert list(c.waiting) == ["h-n2: programmed 1 of 2 tasks"]
    c = judge(service(), tasks, {"n1": view("a", "b")})
    assert list(c.waiting) == ["h-n2: no report yet"]


def test_a_host_still_balancing_to_a_removed_task_is_not_converged() -> None:
    tasks = [task("a", "n1"), task("b", "n2", slot=2, desired=pb.TASK_STATE_SHUTDOWN)]
    c = judge(service(1), tasks, {"n1": view("a", "b"), "n2": view("a")})
    assert list(c.waiting) == ["h-n1: programmed 1 of 1 tasks"]
    # n2 has no task of its own left on the network: it is not concerned any more.
    c = judge(service(1), tasks, {"n1": view("a")})
    assert c.converged and c.hosts_concerned == 1


def test_other_services_tasks_and_attachments_make_a_host_concerned() -> None:
    other = task("x", "n3", service_id="other")
    att = pb.Attachment(node_id="n2", network=pb.NetworkAttachment(network_id=APP))
    c = judge(service(1), [task("a", "n1"), other], {"n1": view("a")}, attachments=(att,))
    assert c.hosts_concerned == 3
    assert list(c.waiting) == ["h-n2: no report yet", "h-n3: no report yet"]


def test_tasks_not_ready_or_of_an_older_spec_hold_it_back() -> None:
    c = judge(
        service(2), [task("a", "n1"), task("b", "n1", slot=2, ready=False)], {"n1": view("a")}
    )
    assert list(c.waiting) == ["1 of 2 tasks ready"]
    svc = service(1, version=2)
    tasks = [task("old", "n1", version=1), task("new", "n1", slot=1, version=2)]
    c = judge(svc, tasks, {"n1": view("old", "new")})
    assert list(c.waiting) == ["1 task(s) of an older spec still running"]


def test_a_published_service_needs_every_ready_mesh_host() -> None:
    svc = service(1, publish=True)
    tasks = [task("a", "n1", nets=(APP, INGRESS))]
    nodes = {**NODES, "n4": node("n4", nftables="no nf_tables"),
             "n5": node("n5", pb.NODE_STATE_DOWN)}  # fmt: skip
    got = {n: view("a", mesh=True) for n in ("n1", "n2")}
    c = judge(svc, tasks, {**got, "n3": view("a")}, nodes)
    assert c.hosts_concerned == 3
    assert list(c.waiting) == ["h-n3: routing mesh not up"]
    c = judge(svc, tasks, {**got, "n3": view("a", mesh=True)}, nodes)
    assert c.converged


def test_a_service_on_no_network_converges_with_its_tasks() -> None:
    svc = service(1)
    del svc.endpoint.virtual_ips[:]
    c = judge(svc, [task("a", "n1", nets=())], {})
    assert c.converged and c.hosts_concerned == 0


def test_many_lagging_hosts_are_counted_after_a_few_names() -> None:
    nodes = {f"n{i}": node(f"n{i}") for i in range(9)}
    tasks = [task(f"t{i}", f"n{i}", slot=i + 1) for i in range(9)]
    c = judge(service(9), tasks, {}, nodes)
    assert len(c.waiting) == 6 and c.waiting[-1] == "and 4 more hosts"
