"""Every RPC declares who may call it (option (ovnet.v1.roles)), and the manager refuses to start
with one that does not: an RPC nobody decided about is never served to everyone by default."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from manager import rpcedge, server
from manager.ca import authz
from manager.ca.server import CertificateAuthority
from manager.cluster import ManagerConfig
from manager.controlapi import ControlAPI
from manager.dispatcher import Dispatcher
from manager.doctor import Doctor
from manager.webui.server import WebUI
from proto import ca_pb2, control_pb2, dispatcher_pb2

EXPECTED = {
    "Control": ("admin", "manager"),
    "Dispatcher": ("worker", "manager"),
}


def methods(module: object, service: str) -> list[str]:
    return [m.name for m in module.DESCRIPTOR.services_by_name[service].methods]  # type: ignore[attr-defined]


def test_every_served_method_declares_known_roles() -> None:
    roles = rpcedge.service_roles()
    served = {f"{name}.{m}" for name, mod in rpcedge.SERVICES for m in methods(mod, name)}
    assert set(roles) == served
    assert {n for n, _ in rpcedge.SERVICES} == {"Control", "Dispatcher", "NodeCA"}
    for method, allowed in roles.items():
        assert allowed and set(allowed) <= authz.KNOWN_ROLES, method


def test_roles_per_service() -> None:
    roles = rpcedge.service_roles()
    for method, allowed in roles.items():
        service = method.split(".")[0]
        if service in EXPECTED:
            assert allowed == EXPECTED[service], method
    assert roles["NodeCA.IssueNodeCertificate"] == ("anonymous",)
    assert roles["NodeCA.RenewNodeCertificate"] == ("worker", "manager")
    assert roles["Control.GetJoinToken"] == ("admin", "manager")


def test_every_method_has_a_body() -> None:
    """The edge calls snake_case(method) on the serving object: each must exist."""
    owners = {
        "Control": (ControlAPI, server.Manager, Doctor, WebUI),
        "Dispatcher": (Dispatcher, Doctor),
        "NodeCA": (CertificateAuthority,),
    }
    for name, module in rpcedge.SERVICES:
        for m in methods(module, name):
            assert any(hasattr(o, rpcedge.snake(m)) for o in owners[name]), f"{name}.{m}"


def fake_service_module(options: dict[str, list[str]]) -> SimpleNamespace:
    """A real service descriptor built at run time: methods named by `options`, each with the
    roles given (none: no option at all)."""
    pool = descriptor_pool.DescriptorPool()
    for dep in (descriptor_pb2.DESCRIPTOR, ca_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(proto)
        pool.Add(proto)
    f = descriptor_pb2.FileDescriptorProto(
        name="fake/evil.proto", package="ovnet.v1", dependency=["proto/ca.proto"], syntax="proto3"
    )
    f.message_type.add(name="Empty")
    svc = f.service.add(name="Evil")
    for name, roles in options.items():
        m = svc.method.add(name=name, input_type=".ovnet.v1.Empty", output_type=".ovnet.v1.Empty")
        for r in roles:
            m.options.Extensions[ca_pb2.roles].append(r)  # type: ignore[index]
    pool.Add(f)
    return SimpleNamespace(DESCRIPTOR=pool.FindFileByName("fake/evil.proto"))


def test_a_method_without_roles_is_refused() -> None:
    module = fake_service_module({"Fine": ["admin"], "Open": [], "Odd": ["root"]})
    desc = module.DESCRIPTOR.services_by_name["Evil"]
    with pytest.raises(authz.RolesError) as info:
        authz.service_roles([desc])
    assert "Evil.Open declares no roles" in str(info.value)
    assert "Evil.Odd declares unknown role(s) root" in str(info.value)
    assert "Evil.Fine" not in str(info.value)
    assert authz.service_roles(
        [fake_service_module({"Fine": ["admin"]}).DESCRIPTOR.services_by_name["Evil"]]
    ) == {"Evil.Fine": ("admin",)}


def test_the_manager_does_not_start_with_such_a_method(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_service_module({"Open": []})
    monkeypatch.setattr(rpcedge, "SERVICES", (*rpcedge.SERVICES, ("Evil", module)))
    with pytest.raises(authz.RolesError, match=r"Evil\.Open declares no roles"):
        server.Manager(server.ServerOptions(), ManagerConfig())


def test_generated_modules_carry_the_option() -> None:
    # The option survives code generation (a stale _pb2 would lose it).
    for mod, svc in ((control_pb2, "Control"), (dispatcher_pb2, "Dispatcher"), (ca_pb2, "NodeCA")):
        for m in mod.DESCRIPTOR.services_by_name[svc].methods:
            assert authz.method_roles(m), f"{svc}.{m.name}"
