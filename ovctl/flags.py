"""argparse pieces the verbs share: value types that turn a `specs` parser's error into a
usage error, and the option groups of the commands that change services (restart, update
and rollback policies, health checks, and how the command waits for convergence)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ovctl import specs


def arg(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """Adapt a `specs` parser to argparse, which shows only ArgumentTypeError messages."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except specs.SpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def count(what: str) -> Callable[[str], Any]:
    return arg(lambda s: specs.parse_uint(s, what), what)


def timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: expected seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be > 0")
    return value


duration = arg(specs.parse_duration, "duration")
publish = arg(specs.parse_publish, "publish")
network = arg(specs.parse_network_attachment, "network")
constraint = arg(specs.parse_constraint, "constraint")
health_port = arg(lambda s: specs.parse_port(s, "health check port"), "port")


def restart_and_update_options(p: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Options `service create` and `service update` share; returns the group of the
    exclusive health check kinds (update adds --no-healthcheck to it)."""
    p.add_argument("--restart-condition", choices=tuple(specs.RESTART_CONDITIONS))
    p.add_argument("--restart-delay", type=duration, metavar="DURATION")
    p.add_argument("--restart-max-attempts", type=count("restart attempts"), metavar="N")
    p.add_argument("--restart-window", type=duration, metavar="DURATION")
    update_config_options(p, "update")
    update_config_options(p, "rollback")
    p.add_argument(
        "--stop-grace-period",
        type=duration,
        metavar="DURATION",
        help="how long a task may take to exit before it is killed (default: the agent's)",
    )
    health = p.add_mutually_exclusive_group()
    health.add_argument(
        "--health-cmd", metavar="STRING", help="health check command, run with sh -c"
    )
    health.add_argument(
        "--health-tcp", type=health_port, metavar="PORT", help="health check: TCP connect"
    )
    p.add_argument("--health-interval", type=duration, metavar="DURATION", help="default 1s")
    p.add_argument("--health-timeout", type=duration, metavar="DURATION", help="default 1s")
    p.add_argument(
        "--health-retries",
        type=count("health retries"),
        metavar="N",
        help="failures in a row before unhealthy (default 3)",
    )
    p.add_argument(
        "--health-start-period",
        type=duration,
        metavar="DURATION",
        help="failures this soon after the start do not count (default 0)",
    )
    return health


def converge_options(p: argparse.ArgumentParser) -> None:
    """How a change command waits until the change is real on every host (ovctl/converge.py)."""
    p.add_argument(
        "-d",
        "--detach",
        action="store_true",
        help="return at once, without waiting for the service to converge",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--monitor",
        type=duration,
        default=0,
        metavar="DURATION",
        help="once converged, how long tasks must stay so (default 0s)",
    )
    p.add_argument(
        "--wait-timeout",
        type=timeout,
        default=120.0,
        metavar="SECONDS",
        help="give up waiting (the change goes on) after this long (default 120)",
    )


def update_config_options(p: argparse.ArgumentParser, kind: str) -> None:
    """Docker's --update-* (how an update replaces tasks) or --rollback-* (how a rollback
    does) options; `update_options(args, kind)` reads them back."""
    p.add_argument(
        f"--{kind}-parallelism",
        type=count(f"{kind} parallelism"),
        metavar="N",
        help="tasks replaced at a time (0: all at once)",
    )
    p.add_argument(
        f"--{kind}-delay",
        type=duration,
        metavar="DURATION",
        help="wait this long after a batch is ready (running, healthy if checked)",
    )
    actions = ("pause", "continue") if kind == "rollback" else tuple(specs.UPDATE_FAILURE_ACTIONS)
    p.add_argument(
        f"--{kind}-failure-action",
        choices=actions,
        help="when a task fails (default pause)",
    )
    p.add_argument(
        f"--{kind}-monitor",
        type=duration,
        metavar="DURATION",
        help="a task failing this soon after it is ready counts as a failure (default 0s)",
    )
    p.add_argument(
        f"--{kind}-max-failure-ratio",
        type=arg(lambda s: specs.parse_ratio(s, f"{kind} max failure ratio"), "ratio"),
        metavar="RATIO",
        help="failures tolerated, as a fraction of the tasks (default 0)",
    )
    p.add_argument(f"--{kind}-order", choices=tuple(specs.UPDATE_ORDERS), help="default stop-first")


def update_options(args: argparse.Namespace, kind: str) -> specs.UpdateOptions:
    def get(name: str) -> Any:
        return getattr(args, f"{kind}_{name}", None)

    return specs.UpdateOptions(
        parallelism=get("parallelism"),
        delay_ms=get("delay"),
        failure_action=get("failure_action"),
        monitor_ms=get("monitor"),
        max_failure_ratio=get("max_failure_ratio"),
        order=get("order"),
    )
