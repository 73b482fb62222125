"""A test bed of booted Debian 12 nodes: systemd-nspawn containers on a private bridge.

Why: the Ansible roles (ansible/) install systemd units and Debian packages, which only a
real systemd on a real Debian can check. Each node here boots Debian 12's own systemd as PID 1
in a container, with its own network namespace, and answers SSH, so `ansible-playbook` runs
against it exactly as against a machine.

Layout of one run (``prefix`` is ``ovt`` + 6 random hex digits, on every name the run makes):

- A cached root filesystem (`ensure_rootfs`): ``debootstrap --variant=minbase`` of bookworm
  with `PACKAGES`, built once under /var/cache/ovnet-tests/nspawn-rootfs-HASH/ and shared
  read-only by every node of every run. The nodes have no internet, so everything a later
  Ansible run installs with apt must already be in it.
- Per node ``nI``: an overlayfs (lower = the cached rootfs, upper/work in the run's temp dir)
  as its root, so nodes never write the cache and start in ~1 s; a network namespace
  ``PREFIX-nI`` with ``eth0`` (a veth) on ``br0``; per-node hostname, machine-id, /etc/hosts,
  SSH host key and the run's authorized key, written into the overlay before boot.
- ``br0`` lives in a namespace of its own, ``PREFIX-br``, never in the root namespace; it holds
  the *control address* (the first host of the subnet) so that programs started there with
  `NodeBed.control_run` (``ansible-playbook``) reach every node by real SSH. Nodes take the
  next addresses. The subnet must lie in 198.51.100.0/24 (the project's test range): nothing
  of this bed ever gets an address, route or link in the root namespace.

How a node is started, and why (measured on a Debian 12 VM with hybrid cgroups, 2026-12):

- ``systemd-nspawn --boot --register=no --keep-unit`` runs in the cgroup it was started in
  and creates ``payload`` and ``supervisor`` below it; two nodes launched from one cgroup
  collide there. So each launcher first moves itself into a cgroup of its own, ``PREFIX-nI``,
  made below this process's cgroup in both the name=systemd and the unified hierarchy (what
  nspawn uses in hybrid mode; just the unified one on a pure cgroup v2 machine).
- ``--network-namespace-path=/run/netns/PREFIX-nI`` (nspawn's own option) rather than
  ``nsenter --net`` or ``ip netns exec``: ``ip netns exec`` remounts /sys and nspawn then fails
  ("No medium found"); under ``nsenter --net`` nspawn works too, but believes it shares the
  host's network. ``--capability=CAP_NET_ADMIN`` and ``SYSTEMD_NSPAWN_API_VFS_WRITABLE=network``
  (a writable /proc/sys/net) give services in the node what an ovnet agent needs: bridges,
  VXLAN, nftables, network namespaces, ``net.ipv4.ip_forward``. Without them nft says
  "Operation not permitted" and sysctl "permission denied".
- ``--resolv-conf=off`` plus the rootfs's /etc/resolv.conf pointing at 127.0.0.1 (nothing
  listens there, so a DNS query fails at once) and a full /etc/hosts: the host's resolver is
  unreachable from a node, and Debian's etcd unit, for one, failed at boot looking up
  ``localhost`` through it.
- A node is ready when ``systemctl is-system-running`` inside says ``running``. Commands run
  in a node through ``nsenter -t LEADER -a`` (LEADER: the node's PID 1, found among the
  nspawn process's children). SIGTERM to nspawn powers the node off cleanly in ~1 s.

Cleanup: every resource is recorded (in /run/ovnet-tests/nodes/PREFIX.json) before it is
made, and `NodeBed.close` removes exactly what is recorded, whatever state start() got to;
pytest's fixture finalizers call it, as do ``atexit`` and SIGTERM (turned into
KeyboardInterrupt so that finalizers run). `sweep_dead_runs` tears down the records of runs
whose owning process is gone (e.g. a pytest killed with SIGKILL); it acts on nothing that is
not listed in such a record, and every listed name must carry that record's prefix.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SUITE = "bookworm"
# Bump when `_prepare_rootfs` (or anything else that shapes the cached tree) changes: it is
# part of the cache key, so old caches are simply not used any more.
ROOTFS_VERSION = 2
# What every node has installed. Nodes have no internet: whatever ansible/ installs with apt
# must be here (the apt module then finds it present). python3-apt is what Ansible's apt
# module imports on the node; sudo serves `become`; iputils-ping checks the bridge.
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "python3-apt",
    "iproute2",
    "nftables",
    "util-linux",
    "openssh-server",
    "ca-certificates",
    "etcd-server",
    "etcd-client",
    "curl",
    "sudo",
    "iputils-ping",
)
# Units masked in the cached rootfs: the apt and maintenance timers would start apt or fstrim
# in the middle of a test (apt-daily also takes apt's lock, which Ansible's apt module then
# waits for); console-getty is a login prompt nobody reads.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily.service",
    "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "console-getty.service",
)
CACHE_ROOT = Path("/var/cache/ovnet-tests")
STATE_DIR = Path("/run/ovnet-tests/nodes")
DEFAULT_SUBNET = "198.51.100.32/28"
# Every bed's subnet must lie in the project's test range (see DESIGN.md, Tests).
TEST_RANGE = ipaddress.IPv4Network("198.51.100.0/24")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# The environment of commands run in a node: the node's own PATH, not this venv's.
NODE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# The launcher: moves itself into each cgroup named before "--" (their cgroup.procs files),
# then execs the command after it, so the command's pid is the one Popen returns.
_CGROUP_WRAPPER = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
)

Log = Callable[[str], None]


def _print_log(message: str) -> None:
    print(f"nodes: {message}", flush=True)


# --------------------------------------------------------------------------- availability


@dataclass(frozen=True)
class CgroupHierarchy:
    """A cgroup hierarchy nspawn uses, and this process's cgroup in it (as a directory)."""

    mount: Path
    own: Path


def cgroup_hierarchies() -> list[CgroupHierarchy]:
    """The hierarchies a launcher must move into: name=systemd (v1) and the unified one (v2).

    Found from /proc/self/mountinfo and /proc/self/cgroup, since the layout differs between
    machines (hybrid here: v1 controllers, name=systemd at /sys/fs/cgroup/systemd, v2 at
    /sys/fs/cgroup/unified; pure v2 elsewhere).
    """
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            own["unified"] = path
        elif "name=systemd" in controllers.split(","):
            own["systemd"] = path
    found: list[CgroupHierarchy] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _source, options = [*post.split(), "", "", ""][:3]
        mount = Path(_unescape_mount(pre.split()[4]))
        if fstype == "cgroup2" and "unified" in own:
            found.append(CgroupHierarchy(mount, mount / own["unified"].lstrip("/")))
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and "systemd" in own:
            found.append(CgroupHierarchy(mount, mount / own["systemd"].lstrip("/")))
    return found


def available() -> str | None:
    """None when nodes can boot here, else why not (for ``pytest.skip``), without booting."""
    if os.geteuid() != 0:
        return "booting nspawn nodes needs root"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("mount", "mount"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian package {package})"
    if not any(
        line.split()[-1] == "overlay" for line in Path("/proc/filesystems").read_text().splitlines()
    ):
        return "the kernel has no overlayfs (nodes share one cached rootfs through it)"
    if not cgroup_hierarchies():
        return "no cgroup hierarchy for systemd found in /proc/self/mountinfo"
    if not (CACHE_ROOT / rootfs_name() / MARKER).is_file() and shutil.which("debootstrap") is None:
        return "no cached rootfs, and debootstrap (Debian package debootstrap) to build one"
    return None


# --------------------------------------------------------------------------- the rootfs cache


def _apt_source_entries(apt_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every enabled ``deb`` source in sources.list and sources.list.d."""
    one_line = [apt_dir / "sources.list"]
    sources_d = apt_dir / "sources.list.d"
    if sources_d.is_dir():
        one_line += sorted(sources_d.glob("*.list"))
    for path in one_line:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]]
    if not sources_d.is_dir():
        return
    for path in sorted(sources_d.glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                key = ""
                for line in stanza.splitlines():
                    if line.startswith("#") or not line.strip():
                        continue
                    if line[0].isspace() and key:
                        fields[key] += " " + line.strip()
                    elif ":" in line:
                        key, _, value = line.partition(":")
                        key = key.strip().lower()
                        fields[key] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()


def debian_mirror(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (OVNET_DEBIAN_MIRROR wins).

    Why: only the mirror apt is configured with is known to be reachable from here.
    """
    override = os.environ.get("OVNET_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    for uri, suites in _apt_source_entries(apt_dir):
        if suite in suites and "security" not in uri:
            return uri.rstrip("/")
    return FALLBACK_MIRROR


def rootfs_name(packages: Sequence[str] = PACKAGES, suite: str = SUITE) -> str:
    """The cache directory's name: a hash of what shapes the tree (not of the mirror)."""
    spec = json.dumps(
        {
            "version": ROOTFS_VERSION,
            "suite": suite,
            "packages": sorted(set(packages)),
            "arch": os.uname().machine,
        },
        sort_keys=True,
    )
    return f"nspawn-rootfs-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


MARKER = "etc/ovnet-test-rootfs.json"


@dataclass(frozen=True)
class Rootfs:
    """A cached rootfs: where it is, and whether this call built it (and how long it took)."""

    path: Path
    built: bool
    seconds: float
    size_bytes: int | None = None


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[int]:
    """Hold an exclusive flock on ``path``; yields the fd (a child given it holds it too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    base = str(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape_mount(line.split()[4])
        if point == base or point.startswith(base + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rm -rf, after unmounting anything left below it (debootstrap killed mid-way leaves /proc
    and /sys mounted in its target; removing those would reach the host's)."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the process that started it dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _dir_size(path: Path) -> int | None:
    out = subprocess.run(
        ["du", "-s", "--block-size=1", "-x", str(path)], capture_output=True, text=True
    )
    with contextlib.suppress(ValueError, IndexError):
        return int(out.stdout.split()[0])
    return None


def ensure_rootfs(
    packages: Sequence[str] = PACKAGES,
    suite: str = SUITE,
    *,
    mirror: str | None = None,
    cache_root: Path = CACHE_ROOT,
    log: Log = _print_log,
) -> Rootfs:
    """The cached rootfs for ``packages``, built first if missing (~1 min, ~330 MB).

    Built into a hidden partial dir and renamed into place only when complete, so a killed
    build never leaves a tree that looks valid; an fcntl lock keeps two runs from building
    (or sweeping each other's partial dirs) at once, and the second one then just uses the
    tree the first built.
    """
    name = rootfs_name(packages, suite)
    final = cache_root / name
    start = time.monotonic()
    with _flock(cache_root / f"{name}.lock") as lock_fd:
        if (final / MARKER).is_file():
            return Rootfs(final, built=False, seconds=time.monotonic() - start)
        if final.exists():  # not made by the rename below: never trust it
            _remove_tree(final)
        for stale in cache_root.glob(f".{name}.partial-*"):
            log(f"removing an interrupted rootfs build {stale}")
            _remove_tree(stale)
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap not found (Debian package debootstrap)")
        mirror = mirror or debian_mirror(suite)
        partial = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=cache_root))
        build_log = cache_root / f"{name}.build.log"
        log(f"building {final} from {mirror} (debootstrap {suite}, log {build_log})")
        try:
            # In PID and mount namespaces of its own: when this process dies, unshare (told
            # to die with us) kills the namespace's first process, and with it every process
            # of the build; the /proc and /sys it mounts in the target vanish with its mount
            # namespace instead of lingering in ours.
            argv = [
                "unshare",
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(sorted(set(packages)))}",
                suite,
                str(partial),
                mirror,
            ]
            proxies = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
            env = {**NODE_ENV, **proxies, "DEBIAN_FRONTEND": "noninteractive"}
            # The build inherits the lock, so that even if some process of it outlived us,
            # the next run would wait for it rather than remove the partial dir under it.
            with build_log.open("wb") as out:
                status = subprocess.run(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=(lock_fd,),
                    preexec_fn=_die_with_parent,
                )
            if status.returncode != 0:
                tail = build_log.read_text(errors="replace").splitlines()[-25:]
                raise RuntimeError(
                    f"debootstrap failed with status {status.returncode}:\n" + "\n".join(tail)
                )
            _prepare_rootfs(partial, packages, suite, mirror)
            os.rename(partial, final)
        except BaseException:
            _remove_tree(partial)
            raise
    seconds = time.monotonic() - start
    size = _dir_size(final)
    log(f"rootfs built in {seconds:.1f} s, {(size or 0) / 1e6:.0f} MB")
    return Rootfs(final, built=True, seconds=seconds, size_bytes=size)


def _prepare_rootfs(root: Path, packages: Sequence[str], suite: str, mirror: str) -> None:
    """Make the debootstrapped tree a node image: things every node shares; per-node and
    per-run things (hostname, machine-id, host keys, authorized_keys) are left out."""
    # mkdtemp made it 0700: as a node's / that would lock out every service user.
    root.chmod(0o755)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for binary in (root / "var/cache/apt").glob("*.bin"):
        binary.unlink()
    # Host keys are made per node at boot time (`NodeBed`): nodes then have distinct
    # identities, and Ansible can check them against a known_hosts file of the run's own
    # instead of turning host key checking off. An ed25519 key costs well under 1 ms.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/hostname").unlink(missing_ok=True)
    _replace_file(root / "etc/machine-id", "")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    _replace_file(root / "etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
    _replace_file(
        root / "etc/resolv.conf",
        "# ovnet test node: no DNS (nodes have no uplink); names are in /etc/hosts.\n"
        "# Nothing listens on 127.0.0.1:53, so a lookup fails at once instead of hanging.\n"
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    _replace_file(
        root / "etc/ssh/sshd_config.d/ovnet-test-node.conf",
        "# ovnet test node: only the per-node ed25519 host key, keys only, no DNS.\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUseDNS no\n",
    )
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    subprocess.run(
        ["systemctl", f"--root={root}", "mask", "--quiet", *MASKED_UNITS],
        check=True,
        capture_output=True,
    )
    marker = {
        "version": ROOTFS_VERSION,
        "suite": suite,
        "packages": sorted(set(packages)),
        "mirror": mirror,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _replace_file(root / MARKER, json.dumps(marker, indent=1) + "\n")


def _replace_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``path`` in a tree being built (a symlink there is replaced, never followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


# --------------------------------------------------------------------------- run records


def _proc_start(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if it is gone or a zombie.

    Recorded with every pid, so a pid reused by another process is never signalled.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _same_process(pid: int, start: int) -> bool:
    return _proc_start(pid) == start


@dataclass
class RunRecord:
    """Everything one run made, written down before it is made (see the module docstring)."""

    prefix: str
    owner_pid: int
    owner_start: int
    workdir: str = ""
    netns: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    # (pid, start time) of the nspawn processes and of the nodes' PID 1s.
    launchers: list[list[int]] = field(default_factory=list)
    leaders: list[list[int]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / f"{self.prefix}.json"

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        return cls(**data)

    def owner_alive(self) -> bool:
        return _same_process(self.owner_pid, self.owner_start)


def _ours(record: RunRecord, name: str) -> bool:
    return Path(name).name.startswith(record.prefix)


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _in_workdir(record: RunRecord, path: str) -> bool:
    return _ours(record, record.workdir) and path.startswith(record.workdir + "/")


def _cgroup_pids(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in cgroup.rglob("cgroup.procs") if cgroup.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _wait_gone(pairs: Sequence[Sequence[int]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_same_process(pid, start) for pid, start in pairs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pairs: Sequence[Sequence[int]], sig: signal.Signals) -> None:
    for pid, start in pairs:
        if _same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def teardown(
    record: RunRecord, log: Log = _print_log, reap: Callable[[], None] | None = None
) -> None:
    """Remove everything ``record`` lists, in dependency order; safe to call more than once.

    Nodes get SIGTERM (a clean poweroff, ~1 s); a node still up after 20 s has its PID 1
    killed (which ends its whole PID namespace), then its nspawn. ``reap`` waits for the
    launchers when they are this process's children (else they would linger as zombies).
    """
    _signal(record.launchers, signal.SIGTERM)
    if not _wait_gone(record.launchers, 20.0):
        log(f"{record.prefix}: nodes still up after SIGTERM + 20 s: killing their PID 1s")
        _signal(record.leaders, signal.SIGKILL)
        if not _wait_gone(record.launchers, 5.0):
            _signal(record.launchers, signal.SIGKILL)
            _wait_gone(record.launchers, 5.0)
    if reap is not None:
        reap()
    for cgroup in map(Path, record.cgroups):
        if not _ours(record, str(cgroup)):
            continue
        leftovers = _cgroup_pids(cgroup)
        for pid in leftovers:  # only processes started in our own cgroups can be here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            time.sleep(0.2)
    for mount in record.mounts:
        if _in_workdir(record, mount):
            for point in _mounts_under(Path(mount)):
                result = subprocess.run(["umount", point], capture_output=True, text=True)
                if result.returncode != 0:
                    subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for cgroup in map(Path, record.cgroups):
        if _ours(record, str(cgroup)) and cgroup.is_dir():
            for sub in sorted(
                (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    for ns in record.netns:
        if _ours(record, ns) and Path("/run/netns", ns).exists():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    if record.workdir and Path(record.workdir).name.startswith(record.prefix):
        _remove_tree(Path(record.workdir))
    record.path.unlink(missing_ok=True)


def sweep_dead_runs(log: Log = _print_log) -> list[str]:
    """Tear down the recorded beds of runs whose process is gone; return their prefixes."""
    if not STATE_DIR.is_dir():
        return []
    swept = []
    with _flock(STATE_DIR / ".sweep.lock"):
        for path in sorted(STATE_DIR.glob("ovt*.json")):
            try:
                record = RunRecord.load(path)
            except (OSError, ValueError, TypeError):
                continue
            if record.owner_alive() or path.name != f"{record.prefix}.json":
                continue
            log(f"removing the bed of a dead run: {record.prefix}")
            teardown(record, log)
            swept.append(record.prefix)
    return swept


# --------------------------------------------------------------------------- nodes


class NodeCommandError(subprocess.CalledProcessError):
    """A command in a node failed; the message carries its output (CalledProcessError's
    does not, and a test failure should say what went wrong inside)."""

    def __init__(
        self, node: str, argv: Sequence[str], result: subprocess.CompletedProcess[str]
    ) -> None:
        super().__init__(result.returncode, list(argv), result.stdout, result.stderr)
        self.node = node

    def __str__(self) -> str:
        return (
            f"{self.node}: {self.cmd} exited with {self.returncode}\n"
            f"--- stdout ---\n{(self.stdout or '')[-3000:]}\n"
            f"--- stderr ---\n{(self.stderr or '')[-3000:]}"
        )


def _write_in_root(root: Path, path: str, data: bytes, mode: int) -> None:
    """Write ``path`` (absolute, as seen inside the node) under ``root`` before boot.

    No component may be a symlink: Debian's trees have absolute ones (e.g. /var/run -> /run)
    that would point into the host's filesystem from out here.
    """
    parts = Path(path.lstrip("/")).parts
    current = root
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise ValueError(f"{path}: {current} is a symlink; write it with Node.put_file")
        if not current.exists():
            current.mkdir(mode=0o755)
    target = current / parts[-1]
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)


@dataclass
class Node:
    """One booted node. ``name`` (node1..) is its hostname and its name in inventories."""

    name: str
    address: str
    netns: str
    machine: str
    root: Path
    log_path: Path
    host_public_key: str
    host_key: bytes = field(default=b"", repr=False)
    process: subprocess.Popen[bytes] | None = None
    leader: int | None = None

    def _nsenter(
        self, argv: Sequence[str], data: bytes | None, timeout: float
    ) -> subprocess.CompletedProcess[bytes]:
        if self.leader is None:
            raise RuntimeError(f"{self.name} is not running")
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv],
            input=data,
            capture_output=True,
            env=NODE_ENV,
            timeout=timeout,
            stdin=subprocess.DEVNULL if data is None else None,
        )

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the node (all its namespaces, its root, its PATH); text output.

        The process joins the node's namespaces but stays in the caller's cgroup: start
        anything long-lived with ``systemd-run`` in the node instead.
        """
        data = input.encode() if isinstance(input, str) else input
        raw = self._nsenter(argv, data, timeout)
        result = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode(errors="replace"),
            raw.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise NodeCommandError(self.name, argv, result)
        return result

    def put_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write ``path`` in the running node (parents made as needed), through the node's
        own view of its filesystem, so symlinks inside it resolve as they would there."""
        script = 'umask 022; mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
        self.run(["sh", "-c", script, "sh", path, format(mode, "o")], input=data)

    def read_file(self, path: str) -> str:
        """The text of ``path`` in the node."""
        return self.run(["cat", path]).stdout

    def log_tail(self, lines: int = 40) -> str:
        """The end of nspawn's output (the node's console): what explains a failed boot."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _ed25519_keypair(comment: str) -> tuple[bytes, str]:
    """(OpenSSH private key, public key line): made in-process, no ssh-keygen needed."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, f"{public.decode()} {comment}"


class NodeBed:
    """``count`` booted Debian 12 nodes on a private bridge (see the module docstring).

    Use as a context manager, or call `start` and (always) `close`. After `start`:
    ``nodes`` (node1..nodeN), ``control_address`` and `control_run` (the bridge namespace,
    from which the nodes are reachable by SSH), `write_inventory` and `ansible_env` for
    Ansible, and ``timings`` (seconds: network, prepare, boot).
    """

    def __init__(
        self,
        count: int = 3,
        *,
        rootfs: Path,
        subnet: str = DEFAULT_SUBNET,
        boot_timeout: float = 90.0,
        allow_degraded: bool = False,
        log: Log = _print_log,
    ) -> None:
        network = ipaddress.IPv4Network(subnet)
        if not network.subnet_of(TEST_RANGE):
            raise ValueError(f"subnet {subnet} is not inside {TEST_RANGE}, the test range")
        hosts = list(network.hosts())
        if count < 1 or count > len(hosts) - 1:
            raise ValueError(f"{subnet} holds at most {len(hosts) - 1} nodes, not {count}")
        self.count = count
        self.rootfs = rootfs
        self.network = network
        self.boot_timeout = boot_timeout
        self.allow_degraded = allow_degraded
        self.log = log
        self.prefix = f"ovt{secrets.token_hex(3)}"
        self.bridge_netns = f"{self.prefix}-br"
        self.control_address = str(hosts[0])
        self._addresses = [str(h) for h in hosts[1 : count + 1]]
        self.nodes: list[Node] = []
        self.timings: dict[str, float] = {}
        self.workdir = Path()
        self.ssh_key = Path()
        self.known_hosts = Path()
        self._public_key = ""
        self._record = RunRecord(self.prefix, os.getpid(), _proc_start(os.getpid()) or 0)
        self._lock = threading.Lock()
        self._closed = False
        self._sigterm_hooked = False
        self._claimed = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> NodeBed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NodeBed:
        """Make the network, the overlays and the nodes, boot them all, wait until each is
        ``running``. On any failure everything made so far is removed before raising."""
        self._install_exit_hooks()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _claim_prefix(self) -> None:
        """Make the prefix this run's alone before anything is named after it: a record file
        created exclusively, and no namespace or cgroup of that name already there (else a
        teardown after a failed start would remove another run's)."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            taken = any(p.name.startswith(self.prefix) for p in _listdir(Path("/run/netns")))
            taken = taken or any(
                p.name.startswith(self.prefix)
                for h in cgroup_hierarchies()
                for p in _listdir(h.own)
            )
            if not taken:
                try:
                    os.close(os.open(self._record.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    self._claimed = True
                    self._record.save()
                    return
                except FileExistsError:
                    pass
            self.prefix = f"ovt{secrets.token_hex(3)}"
            self.bridge_netns = f"{self.prefix}-br"
            self._record.prefix = self.prefix
        raise RuntimeError("no free run prefix after 20 tries")

    def _start(self) -> None:
        self._claim_prefix()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._record.workdir = str(self.workdir)
        self._record.save()
        t0 = time.monotonic()
        self._make_keys()
        for i, address in enumerate(self._addresses, start=1):
            key, pub = _ed25519_keypair(f"root@node{i}")
            node = Node(
                name=f"node{i}",
                address=address,
                netns=f"{self.prefix}-n{i}",
                machine=f"{self.prefix}-n{i}",
                root=self.workdir / f"n{i}" / "root",
                log_path=self.workdir / f"n{i}" / "console.log",
                host_public_key=pub,
                host_key=key,
            )
            self.nodes.append(node)
        self._write_known_hosts()
        self._make_network()
        t1 = time.monotonic()
        for node in self.nodes:
            self._prepare_node(node)
        t2 = time.monotonic()
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._wait_running(node, t2 + self.boot_timeout)
        t3 = time.monotonic()
        self.timings.update(network=t1 - t0, prepare=t2 - t1, boot=t3 - t2)
        self.log(
            f"{self.count} nodes running in {t3 - t2:.1f} s "
            f"(network {t1 - t0:.2f} s, overlays {t2 - t1:.2f} s); prefix {self.prefix}"
        )

    def close(self) -> None:
        """Power the nodes off and remove everything this run made (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        t0 = time.monotonic()
        if self._claimed:  # else nothing was made, and the prefix may be another run's
            teardown(self._record, self.log, reap=self._reap)
        for node in self.nodes:
            node.leader = None
        self.timings["shutdown"] = time.monotonic() - t0
        self._remove_exit_hooks()

    def _reap(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=5)

    def _install_exit_hooks(self) -> None:
        atexit.register(self.close)
        _sigterm_hook(+1)
        self._sigterm_hooked = True

    def _remove_exit_hooks(self) -> None:
        atexit.unregister(self.close)
        if self._sigterm_hooked:
            _sigterm_hook(-1)
            self._sigterm_hooked = False

    # ------------------------------------------------------------------ building blocks

    def _make_keys(self) -> None:
        private, public = _ed25519_keypair(f"ovnet-test-{self.prefix}")
        self.ssh_key = self.workdir / "id_ed25519"
        _write_in_root(self.workdir, "/id_ed25519", private, 0o600)
        (self.workdir / "id_ed25519.pub").write_text(public + "\n")
        self._public_key = public

    def _write_known_hosts(self) -> None:
        self.known_hosts = self.workdir / "known_hosts"
        lines = []
        for node in self.nodes:
            key_type, key_data = node.host_public_key.split()[:2]
            lines.append(f"{node.address},{node.name} {key_type} {key_data}\n")
        self.known_hosts.write_text("".join(lines))

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def _make_network(self) -> None:
        prefixlen = self.network.prefixlen
        br = self.bridge_netns
        self._record.netns.append(br)
        self._record.save()
        self._ip("netns", "add", br)
        self._ip("-n", br, "link", "set", "lo", "up")
        self._ip("-n", br, "link", "add", "br0", "type", "bridge")
        self._ip("-n", br, "addr", "add", f"{self.control_address}/{prefixlen}", "dev", "br0")
        self._ip("-n", br, "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes, start=1):
            self._record.netns.append(node.netns)
            self._record.save()
            self._ip("netns", "add", node.netns)
            self._ip("-n", node.netns, "link", "set", "lo", "up")
            # Both ends are created directly in their namespaces: nothing passes through
            # the root namespace, not even for a moment.
            peer = ["peer", "name", "eth0", "netns", node.netns]
            self._ip("-n", br, "link", "add", f"veth-n{i}", "type", "veth", *peer)
            self._ip("-n", br, "link", "set", f"veth-n{i}", "master", "br0", "up")
            self._ip("-n", node.netns, "addr", "add", f"{node.address}/{prefixlen}", "dev", "eth0")
            self._ip("-n", node.netns, "link", "set", "eth0", "up")

    def _hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines += [f"{n.address} {n.name}" for n in self.nodes]
        lines.append(f"{self.control_address} control")
        return "\n".join(lines) + "\n"

    def _prepare_node(self, node: Node) -> None:
        base = node.root.parent
        upper, work = base / "upper", base / "work"
        for d in (upper, work, node.root):
            d.mkdir(parents=True)
        options = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
        if re.search(r"[,:\s]", f"{self.rootfs}{upper}{work}"):
            raise ValueError(f"overlay paths must not hold ',', ':' or blanks: {options}")
        self._record.mounts.append(str(node.root))
        self._record.save()
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(node.root)],
            check=True,
            capture_output=True,
        )
        files: dict[str, tuple[bytes, int]] = {
            "/etc/hostname": (f"{node.name}\n".encode(), 0o644),
            "/etc/machine-id": (f"{secrets.token_hex(16)}\n".encode(), 0o444),
            "/etc/hosts": (self._hosts_file().encode(), 0o644),
            "/etc/ssh/ssh_host_ed25519_key": (node.host_key, 0o600),
            "/etc/ssh/ssh_host_ed25519_key.pub": (f"{node.host_public_key}\n".encode(), 0o644),
            "/root/.ssh/authorized_keys": (f"{self._public_key}\n".encode(), 0o600),
            # Ansible's apt module skips `update_cache` while this is younger than its
            # cache_valid_time: with no uplink, an apt-get update would only fail.
            "/var/lib/apt/periodic/update-success-stamp": (b"", 0o644),
        }
        for path, (data, mode) in files.items():
            _write_in_root(node.root, path, data, mode)

    def _launch(self, node: Node) -> None:
        procs_files = []
        for hierarchy in cgroup_hierarchies():
            cgroup = hierarchy.own / node.machine
            self._record.cgroups.append(str(cgroup))
            self._record.save()
            cgroup.mkdir(exist_ok=True)
            procs_files.append(str(cgroup / "cgroup.procs"))
        argv = [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=passive",
            f"--network-namespace-path=/run/netns/{node.netns}",
            "--capability=CAP_NET_ADMIN",
            f"--machine={node.machine}",
            f"--directory={node.root}",
        ]
        env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
        with node.log_path.open("wb") as console:
            node.process = subprocess.Popen(
                ["sh", "-c", _CGROUP_WRAPPER, "sh", *procs_files, "--", *argv],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        start = _proc_start(node.process.pid)
        if start is not None:
            self._record.launchers.append([node.process.pid, start])
            self._record.save()

    def _find_leader(self, node: Node) -> int | None:
        """The node's PID 1: a child of nspawn running systemd in another PID namespace."""
        assert node.process is not None
        own_pidns = os.readlink("/proc/self/ns/pid")
        children: list[int] = []
        for task in Path(f"/proc/{node.process.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
        for pid in children:
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm == "systemd" and os.readlink(f"/proc/{pid}/ns/pid") != own_pidns:
                    return pid
        return None

    def _boot_failed(self, node: Node, why: str) -> RuntimeError:
        return RuntimeError(
            f"{node.name} ({node.machine}): {why}\n--- console ---\n{node.log_tail()}"
        )

    def _wait_running(self, node: Node, deadline: float) -> None:
        assert node.process is not None
        state = ""
        while True:
            if node.process.poll() is not None:
                raise self._boot_failed(node, f"nspawn exited with {node.process.returncode}")
            if time.monotonic() > deadline:
                raise self._boot_failed(
                    node,
                    f"not running after {self.boot_timeout:.0f} s "
                    f"(last state: {state or 'no PID 1 yet'})",
                )
            if node.leader is None:
                node.leader = self._find_leader(node)
                if node.leader is not None:
                    start = _proc_start(node.leader)
                    if start is not None:
                        self._record.leaders.append([node.leader, start])
                        self._record.save()
            if node.leader is not None:
                result = node.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = result.stdout.strip()
                if state == "running":
                    return
                if state == "degraded":
                    failed = node.run(["systemctl", "--failed", "--no-pager"], check=False)
                    journal = node.run(
                        ["journalctl", "-b", "-p", "warning", "--no-pager", "-n", "30"],
                        check=False,
                    )
                    self.log(f"{node.name} is degraded:\n{failed.stdout}{journal.stdout}")
                    if self.allow_degraded:
                        return
                    raise self._boot_failed(node, f"degraded:\n{failed.stdout}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ Ansible

    def control_run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        check: bool = True,
        timeout: float = 600.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (a host program) in the bridge namespace, where the control address
        is, so it reaches the nodes by their addresses; filesystem and everything else are the
        host's. The root namespace has no route to the nodes, by design."""
        result = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.bridge_netns}", "--", *argv],
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise NodeCommandError("control", argv, result)
        return result

    def write_inventory(
        self,
        groups: Mapping[str, Sequence[str]] | None = None,
        path: Path | None = None,
    ) -> Path:
        """An INI inventory of the nodes for Ansible over SSH from `control_run`.

        ``groups`` maps group names to node names; by default every node is in ``etcd``,
        ``managers`` and ``agents`` (the groups of ansible/inventory.example.ini). Host keys
        are checked against the run's known_hosts file, not skipped.
        """
        names = [n.name for n in self.nodes]
        groups = (
            groups if groups is not None else {g: names for g in ("etcd", "managers", "agents")}
        )
        lines = [f"{n.name} ansible_host={n.address}" for n in self.nodes]
        for group, members in groups.items():
            unknown = set(members) - set(names)
            if unknown:
                raise ValueError(f"group {group}: no such nodes {sorted(unknown)}")
            lines += ["", f"[{group}]", *members]
        ssh_args = " ".join(
            [
                f"-o UserKnownHostsFile={self.known_hosts}",
                "-o StrictHostKeyChecking=yes",
                "-o IdentitiesOnly=yes",
                "-o BatchMode=yes",
            ]
        )
        lines += [
            "",
            "[all:vars]",
            "ansible_user=root",
            "ansible_python_interpreter=/usr/bin/python3",
            f"ansible_ssh_private_key_file={self.ssh_key}",
            f"ansible_ssh_common_args='{ssh_args}'",
        ]
        target = path or self.workdir / "inventory.ini"
        target.write_text("\n".join(lines) + "\n")
        return target

    def ansible_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for ansible/ansible-playbook run through `control_run`.

        Ansible's home, temp and SSH control sockets go into the run's dir (nothing in
        ~/.ansible, no clash between runs); pipelining saves an SSH round trip per task.
        """
        home = self.workdir / "ansible"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        (home / "cp").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', NODE_ENV['PATH'])}",
                "ANSIBLE_HOME": str(home),
                "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_PIPELINING": "True",
                "ANSIBLE_NOCOLOR": "1",
            }
        )
        env.update(extra or {})
        return env


def ansible_command(name: str = "ansible") -> Path:
    """The venv's ``ansible``/``ansible-playbook`` (ansible-core is in the dev extras)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(
                f"{name} not found: ansible-core is in the dev extras (pip install -e '.[dev]')"
            )
        path = Path(found)
    return path


_open_beds = 0
_open_beds_lock = threading.Lock()


def _sigterm_hook(delta: int) -> None:
    """Count open beds; SIGTERM raises KeyboardInterrupt while any is open (set only over
    the default action, from the main thread: a handler someone else set stays theirs)."""
    global _open_beds
    with _open_beds_lock:
        _open_beds += delta
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if _open_beds > 0 and current == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        elif _open_beds == 0 and current is _sigterm_to_interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM would end Python without running finalizers or atexit; an interrupt does."""
    raise KeyboardInterrupt(f"signal {signum}")
