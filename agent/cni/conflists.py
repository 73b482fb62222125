"""One CNI network configuration list per attachable ovnet network, in a runtime's config dir.

A CNI runtime knows the networks it finds as `.conflist` files: podman (CNI backend) lists
every conflist of its network_config_dir in `podman network ls`, and `podman run --network
NAME` runs that conflist's plugins, so a conflist naming `ovnet-cni` is all it takes for
`podman run --network backend` to join ovnet's overlay "backend". containerd/nerdctl and CRI-O
read the same directory. The agent keeps the directory in step with the attachable networks it
knows: `sync` writes what is missing or changed and removes what is no longer wanted.

The directory is shared with other runtimes' files and perhaps with another agent (a second
agent on the host with its own socket): a file is only removed when its content shows it is
ours - an `ovnet-cni` plugin talking to our socket - whatever its name.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cni.protocol import DEFAULT_SOCKET, PLUGIN_TYPE
from osutil.files import atomic_write

if TYPE_CHECKING:
    from proto import objects_pb2 as pb

log = logging.getLogger(__name__)

SUFFIX = ".conflist"
# The spec's rule for a network name (section 1); a runtime refuses a conflist breaking it,
# and it keeps the name a plain file name.
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def render(network_name: str, network_id: str, socket_path: str, cni_version: str = "1.0.0") -> str:
    """The conflist of one network. The plugin finds the network by ID (a name can be reused
    after a removal); capability "aliases" makes podman pass `--network-alias` values."""
    conf = {
        "cniVersion": cni_version,
        "name": network_name,
        "plugins": [
            {
                "type": PLUGIN_TYPE,
                "network": network_id,
                "socket": socket_path,
                "capabilities": {"aliases": True},
            }
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def is_ours(text: str, socket_path: str) -> bool:
    """Whether a conflist's content is one this agent wrote: an ovnet-cni plugin on our socket
    (a plugin without "socket" uses the default one)."""
    try:
        conf = json.loads(text)
    except (ValueError, RecursionError):
        return False
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    if not isinstance(plugins, list):
        return False
    return any(
        isinstance(p, dict)
        and p.get("type") == PLUGIN_TYPE
        and p.get("socket", DEFAULT_SOCKET) == socket_path
        for p in plugins
    )


def wanted_files(
    networks: Mapping[str, str], socket_path: str, file_prefix: str = "ovnet-"
) -> tuple[dict[str, str], list[str]]:
    """({file name: content}, [why a network gets no file]) for ``networks`` (id -> name).

    Two networks with one name (possible while a removed one is still draining) would want one
    file: the first ID in sorted order keeps it, so the choice does not flap between syncs.
    """
    files: dict[str, str] = {}
    owner: dict[str, str] = {}
    skipped: list[str] = []
    for network_id, name in sorted(networks.items()):
        file_name = f"{file_prefix}{name}{SUFFIX}"
        if not _NETWORK_NAME.fullmatch(name):
            skipped.append(f"skipped network {network_id}: {name!r} is not a CNI network name")
        elif file_name in files:
            skipped.append(
                f"skipped network {network_id}: network {owner[file_name]} is also named {name}"
            )
        else:
            files[file_name] = render(name, network_id, socket_path)
            owner[file_name] = network_id
    return files, skipped


def sync(
    conf_dir: Path,
    networks: Mapping[str, str],
    socket_path: str,
    file_prefix: str = "ovnet-",
) -> list[str]:
    """Make ``conf_dir`` hold one conflist per network (``networks``: id -> name), named
    ``<file_prefix><name>.conflist``, and none of ours for a network no longer there.

    Only files whose content differs are rewritten (atomically: a runtime reading the dir
    never sees half a file), so a sync with nothing new changes nothing. A file with a wanted
    name that is not ours is left alone rather than overwritten, and so is every file that is
    not ours. Returns what was done (and what was not, and why), one line each, for the log.
    """
    wanted, changes = wanted_files(networks, socket_path, file_prefix)
    present = sorted(conf_dir.glob(f"{file_prefix}*{SUFFIX}")) if conf_dir.is_dir() else []
    existing = {p.name: _read(p) for p in present}
    for file_name, content in wanted.items():
        path = conf_dir / file_name
        if file_name in existing:
            old = existing[file_name]
            if old == content:
                continue
            if old is None or not is_ours(old, socket_path):
                changes.append(f"left {path} alone: it is not ours (so no conflist for it)")
                continue
        atomic_write(path, content, mkdir=True)
        changes.append(f"wrote {path}")
    for file_name, old in existing.items():
        if file_name not in wanted and old is not None and is_ours(old, socket_path):
            path = conf_dir / file_name
            path.unlink(missing_ok=True)
            changes.append(f"removed {path}")
    return changes


def _read(path: Path) -> str | None:
    """A file's text; None for what is not a readable text file (left alone)."""
    if not path.is_file():
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


class ConflistWriter:
    """What the daemon calls with the networks of every assignment pass (agent/wiring.py).

    It lists the attachable networks (not the ingress one, which takes no containers) and
    syncs only when that list changed since the last sync that worked, so the daemon's loop
    does not read the directory on every pass and a lasting oddity (a foreign file under a
    wanted name) is logged once, not every pass. A failure (a read-only dir) is logged, never
    raised into the daemon, and retried on the next pass.
    """

    def __init__(self, conf_dir: Path, socket_path: str, file_prefix: str = "ovnet-") -> None:
        self.conf_dir = conf_dir
        self.socket_path = socket_path
        self.file_prefix = file_prefix
        self._synced: dict[str, str] | None = None

    def __call__(self, networks: Mapping[str, pb.Network]) -> None:
        wanted = {
            n.meta.id: n.spec.name
            for n in networks.values()
            if n.spec.attachable and not n.spec.ingress
        }
        if wanted == self._synced:
            return
        try:
            changes = sync(self.conf_dir, wanted, self.socket_path, self.file_prefix)
        except OSError as e:
            log.warning("cannot write the CNI conflists in %s: %s", self.conf_dir, e)
            return
        self._synced = wanted
        for change in changes:
            log.info("CNI conflists: %s", change)
