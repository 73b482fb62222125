"""The deployment files agree with each other and with the code they start.

systemd units, Ansible roles and pyproject.toml are edited by different hands; nothing else
would notice a unit that starts a console script that no longer exists, an env file the
playbook names differently from the unit, or a flag the daemon stopped accepting.
"""

from __future__ import annotations

import configparser
import importlib
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "packaging" / "systemd").glob("*.service"))
ANSIBLE = ROOT / "ansible"
ROLES = ANSIBLE / "roles"
VENV_BIN = "/opt/ovnet/.venv/bin/"

# unit name -> (role that installs it, env file it reads, variable holding the arguments)
SERVICES = {
    "ovnet-manager": ("ovnet_manager", "/etc/ovnet/manager.env", "OVNET_MANAGER_ARGS"),
    "ovnet-agent": ("ovnet_agent", "/etc/ovnet/agent.env", "OVNET_AGENT_ARGS"),
}


def _console_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _role_tasks(role: str) -> list[dict[str, Any]]:
    return list(_yaml(ROLES / role / "tasks" / "main.yml"))


def _all_task_files() -> Iterator[Path]:
    for kind in ("tasks", "handlers"):
        yield from sorted(ROLES.glob(f"*/{kind}/main.yml"))


def test_units_exist_for_every_service() -> None:
    assert sorted(u.stem for u in UNITS) == sorted(SERVICES)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_starts_an_existing_console_script_with_its_env_args(unit: Path) -> None:
    service = _unit(unit)["Service"]
    _, env_file, var = SERVICES[unit.stem]
    exec_start = service["ExecStart"].split()
    assert exec_start[0].startswith(VENV_BIN)
    script = exec_start[0].removeprefix(VENV_BIN)
    assert script in _console_scripts(), f"{unit.name} starts {script}, not in pyproject"
    assert exec_start[1:] == [f"${var}"]
    assert service["EnvironmentFile"] == env_file
    assert service["Restart"] == "on-failure"
    assert _unit(unit)["Install"]["WantedBy"] == "multi-user.target"


def test_manager_unit_orders_after_network_and_etcd() -> None:
    after = _unit(ROOT / "packaging/systemd/ovnet-manager.service")["Unit"]["After"].split()
    assert {"network-online.target", "etcd.service"} <= set(after)


def test_agent_unit_runs_as_root() -> None:
    service = _unit(ROOT / "packaging/systemd/ovnet-agent.service")["Service"]
    assert service.get("User", "root") == "root"
    assert "DynamicUser" not in service and "CapabilityBoundingSet" not in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists, so the copies point at this checkout's venv.
    local_bin = str(ROOT / ".venv" / "bin") + "/"
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(VENV_BIN, local_bin))
        copies.append(str(copy))
    result = subprocess.run(
        ["systemd-analyze", "verify", *copies], capture_output=True, text=True, check=False
    )
    # verify exits 0 on many errors (it only warns), so any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_site_playbook_uses_existing_roles() -> None:
    plays = _yaml(ANSIBLE / "site.yml")
    used = set()
    for play in plays:
        for role in play["roles"]:
            used.add(role if isinstance(role, str) else role["role"])
    assert used == {"ovnet_common", "etcd", "ovnet_manager", "ovnet_agent"}
    for role in used:
        assert (ROLES / role / "tasks" / "main.yml").is_file()


def test_inventory_example_has_every_group_the_playbook_needs() -> None:
    inventory = configparser.ConfigParser(allow_no_value=True, delimiters=(" ",))
    inventory.read(ANSIBLE / "inventory.example.ini")
    for group in ("etcd", "managers", "agents"):
        assert inventory.has_section(group) and inventory.options(group), group


def test_templates_and_handlers_referenced_by_tasks_exist() -> None:
    handlers: set[str] = set()
    for path in sorted(ROLES.glob("*/handlers/main.yml")):
        for handler in _yaml(path):
            handlers.add(handler["name"])
            listen = handler.get("listen", [])
            handlers.update([listen] if isinstance(listen, str) else listen)
    for path in _all_task_files():
        role_dir = path.parents[1]
        for task in _yaml(path):
            template = task.get("ansible.builtin.template")
            if template:
                assert (role_dir / "templates" / template["src"]).is_file(), template["src"]
            notify = task.get("notify", [])
            for name in [notify] if isinstance(notify, str) else notify:
                assert name in handlers, f"{path.relative_to(ROOT)} notifies unknown {name!r}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_role_installs_the_shipped_unit_and_its_env_file(service: str) -> None:
    role, env_file, var = SERVICES[service]
    tasks = _role_tasks(role)
    copies = [t["ansible.builtin.copy"] for t in tasks if "ansible.builtin.copy" in t]
    assert any(
        c.get("src", "").endswith(f"packaging/systemd/{service}.service")
        and c["dest"] == f"/etc/systemd/system/{service}.service"
        for c in copies
    )
    (template,) = [t["ansible.builtin.template"] for t in tasks if "ansible.builtin.template" in t]
    assert template["dest"] == env_file
    assert (ROLES / role / "templates" / template["src"]).read_text().count(f"{var}=") == 1
    started = [t["ansible.builtin.systemd"] for t in tasks if "ansible.builtin.systemd" in t]
    assert {"name": service, "enabled": True, "state": "started"}.items() <= started[0].items()


@pytest.mark.parametrize(
    ("role", "module"), [("ovnet_manager", "manager.main"), ("ovnet_agent", "agent.main")]
)
def test_env_templates_only_pass_flags_the_daemon_accepts(
    role: str, module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (template,) = (ROLES / role / "templates").glob("*.env.j2")
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", template.read_text()))
    assert flags, f"{template.name} passes no flags"
    with pytest.raises(SystemExit):
        importlib.import_module(module).parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert flags <= set(re.findall(r"--[a-z][a-z0-9-]*", help_text))


def test_manager_gets_the_ca_key_as_a_credential_at_the_path_its_flags_name() -> None:
    """The KEK file is root's (0600) and the manager runs as a dynamic user: systemd hands it
    a copy (LoadCredential), which must be where --ca-key-file points."""
    service = _unit(ROOT / "packaging/systemd/ovnet-manager.service")["Service"]
    name, _, source = service["LoadCredential"].partition(":")
    args = (ROLES / "ovnet_manager" / "templates" / "manager.env.j2").read_text()
    assert f"--ca-key-file /run/credentials/ovnet-manager.service/{name} " in args
    defaults = _yaml(ANSIBLE / "group_vars" / "all.yml")
    assert source == defaults["ovnet_ca_key_file"]
    assert f"--state-dir /var/lib/{service['StateDirectory']} " in args.replace(
        "{{ ovnet_manager_state_dir }}",
        _yaml(ROLES / "ovnet_manager" / "defaults" / "main.yml")["ovnet_manager_state_dir"],
    )
    kek_copy = [
        t["ansible.builtin.copy"]
        for t in _role_tasks("ovnet_manager")
        if t.get("ansible.builtin.copy", {}).get("dest") == "{{ ovnet_ca_key_file }}"
    ]
    assert [c["mode"] for c in kek_copy] == ["0600"]


def test_cluster_is_initialized_once_and_agents_join_with_the_worker_token() -> None:
    (init,) = [t for t in _role_tasks("ovnet_manager") if "init" in t.get("name", "").lower()]
    argv = init["ansible.builtin.command"]["argv"]
    assert "[ovnet_root ~ '/.venv/bin/ovnet-manager', 'init'," in argv
    assert init["when"] == "inventory_hostname == ovnet_first_manager"
    assert "already initialized" in init["failed_when"]
    (token,) = [
        t for t in _role_tasks("ovnet_agent") if t.get("register") == "ovnet_agent_worker_token"
    ]
    assert token["register"] == "ovnet_agent_worker_token"
    assert token["ansible.builtin.command"]["argv"][-4:] == [
        "cluster",
        "join-token",
        "--quiet",
        "worker",
    ]
    (env,) = [
        t["ansible.builtin.template"]
        for t in _role_tasks("ovnet_agent")
        if "ansible.builtin.template" in t
    ]
    assert env["mode"] == "0600"  # it holds the token
    text = (ROLES / "ovnet_agent" / "templates" / env["src"]).read_text()
    assert 'OVNET_JOIN_TOKEN="{{ ovnet_agent_worker_token.stdout | trim }}"' in text


VENV = ROOT / ".venv" / "bin"


@pytest.mark.skipif(not (VENV / "ansible-lint").exists(), reason="ansible-lint not in .venv")
def test_playbook_passes_syntax_check_and_ansible_lint_production() -> None:
    """ansible-lint's strictest profile, offline (no Galaxy here); nothing is skipped."""
    for argv in (
        [str(VENV / "ansible-playbook"), "--syntax-check", "-i", "inventory.example.ini",
         "site.yml"],
        [str(VENV / "ansible-lint"), "--offline", "--profile", "production", "--format=pep8",
         "--nocolor", "site.yml"],
    ):  # fmt: skip
        res = subprocess.run(argv, cwd=ANSIBLE, capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{argv[0]}:\n{res.stdout}{res.stderr}"
