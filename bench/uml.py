"""A user-mode-linux (UML) test bed: run a bash script as root inside a throwaway Linux kernel.

Why: this machine's kernel has no ESP (``ip xfrm state add ... proto esp`` says "Requested type
not found") and loads no modules, so encrypted overlays cannot be tested on it. Debian's
``user-mode-linux`` kernel (6.1) has ESP, xfrm, VXLAN, bridges, veth, netns and legacy
iptables (no nftables for ip/inet/netdev), runs as an ordinary host process, and boots in about
2 s with this machine's filesystem as its root (hostfs), so the project's venv runs inside it.

`boot` writes the script into a private temp dir, boots the kernel with that dir visible inside
at `UML_DIR`, runs the script with its working directory at `IO_DIR`, and reads back its exit
status and output from files (the UML console is noisy with kernel messages; it is kept in
`UmlResult.console` only to explain a failure). Inside, before the script runs:

- proc and sysfs are mounted, tmpfs on /run (so ``ip netns add`` does not write the host's
  /run/netns; /var/run and /var/lock point into /run on Debian), /tmp, /var/tmp and /dev/shm:
  the root filesystem *is* the host's, so anything the script writes elsewhere lands on the host.
- ``modprobe`` (first on PATH) is a wrapper running ``modprobe -d DIR`` where DIR/lib/modules
  is /usr/lib/uml/modules: the host's /lib/modules belongs to the host's kernel (and is absent
  here). The modules a test needs are loaded with it before the script starts (`boot`'s
  ``modules``), and the kernel's own on-demand loading is off by default (OVERLAY_MODULES
  says why); ``on_demand=True`` points /proc/sys/kernel/modprobe at the wrapper instead.
- lo is up; ``UML_IO`` names `IO_DIR`; ``UML_TOOLS`` is a command running this file as a tool
  with the host's interpreter (``$UML_TOOLS probe SPEC_JSON``: capture, ping, UDP send/receive
  across namespaces in one process; see `probe`), because Debian's ping and nc are not
  installed here.

Only legacy iptables works inside (``iptables-legacy``; Debian's default ``iptables`` is the
nft backend: "Failed to initialize nft: Protocol not supported"); load IPTABLES_MODULES.

Nothing of UML lands in ~/.uml (``uml_dir=`` points into the private dir). The kernel and its
helper processes run in their own process group, killed as a group (and only once its leader
is known to be ours) on timeout or after a crash; the private dir is removed in every case.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import py_compile
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UML_BINARIES = (Path("/usr/bin/linux"), Path("/usr/bin/linux.uml"), Path("/usr/bin/vmlinux"))
UML_MODULES = Path("/usr/lib/uml/modules")
MODPROBE = Path("/usr/sbin/modprobe")
# Where the private dir appears inside the UML instance (a bind mount made by the init script:
# the host path itself lives under /tmp, which gets a tmpfs inside), and the script's own
# working directory in it.
UML_DIR = "/run/uml"
IO_DIR = f"{UML_DIR}/io"
# Exit status reported when the script never wrote one (timeout, kernel panic, init crash).
NO_STATUS = -1

# Modules loaded at boot by default: what a VXLAN-over-ESP overlay needs. The kernel's own
# on-demand loading is off unless boot(on_demand=True): inside UML every request costs a
# process start (~0.2 s), and one `ip xfrm state add` with rfc4106(gcm(aes)) makes 23 of them
# (5 s); one `modprobe -a` of this list takes 0.5 s, and the same state add then 0.3 s.
OVERLAY_MODULES = (
    "xfrm_user",
    "esp4",
    "gcm",
    "ghash_generic",
    "ctr",
    "seqiv",
    "hmac",
    "sha512_generic",
    "jitterentropy_rng",
    "drbg",
    "bridge",
    "veth",
    "vxlan",
)
# What legacy iptables needs for filter rules on ESP and IPsec policy matches.
IPTABLES_MODULES = ("ip_tables", "iptable_filter", "xt_tcpudp", "xt_policy", "xt_mark", "xt_u32")

# PID 1 of the UML instance. @NAME@ are filled in by _prepare (bash's own braces and
# dollars stay as they are). Every command started here costs ~0.1 s inside UML, so the
# mounts are one `mount -a` of a private fstab, and the modprobe wrapper and module tree are
# made on the host side, in the private dir.
_INIT = r"""#!/bin/bash
export PATH=@UML_DIR@/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 UML_IO=@IO_DIR@ UML_TOOLS=@TOOLS@
# The kernel hands unknown name=value boot parameters to init as environment.
unset mem uml_dir umid con con0 ssl
mount -a -T @FSTAB@
echo @KERNEL_MODPROBE@ >/proc/sys/kernel/modprobe
ip link set lo up
cd @IO_DIR@
@ENV@
{
    if [ -z "@PRELOAD@" ] || modprobe -a @PRELOAD@; then
        bash @IO_DIR@/script.sh
    else
        echo "uml init: modprobe -a @PRELOAD@ failed" >&2
        false
    fi
} >@IO_DIR@/output 2>&1 </dev/null
echo $? >@IO_DIR@/status
sync
poweroff -f
echo o >/proc/sysrq-trigger
"""

# Mounted in this order by the init's `mount -a`; @PRIVATE@ is the private dir's host path.
_FSTAB = """\
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
tmpfs /run tmpfs mode=0755 0 0
tmpfs /run/lock tmpfs mode=1777,X-mount.mkdir 0 0
@PRIVATE@ @UML_DIR@ none bind,X-mount.mkdir 0 0
tmpfs /tmp tmpfs mode=1777 0 0
tmpfs /var/tmp tmpfs mode=1777 0 0
tmpfs /dev/shm tmpfs mode=1777,X-mount.mkdir 0 0
"""


@dataclass(frozen=True)
class UmlResult:
    """What a script run inside UML left behind.

    returncode: the script's exit status, or NO_STATUS when it never finished (see timed_out
    and console). output: the script's stdout and stderr, interleaved. console: the kernel's
    console log, for diagnosing a boot failure or panic. elapsed: seconds from starting the
    kernel until it was gone (boot + script + power-off).
    """

    returncode: int
    output: str
    console: str
    timed_out: bool
    elapsed: float

    def describe(self) -> str:
        """A failure message: status, the script's output, and the console's tail."""
        state = "timed out" if self.timed_out else f"exit status {self.returncode}"
        tail = "\n".join(self.console.splitlines()[-30:])
        return (
            f"UML script {state} after {self.elapsed:.1f} s\n--- output ---\n{self.output}"
            f"\n--- console (tail) ---\n{tail}"
        )


def uml_binary() -> Path | None:
    """The UML kernel (Debian installs /usr/bin/linux as an alternative for linux.uml)."""
    for path in UML_BINARIES:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def _memory_dir() -> Path:
    # UML backs its "physical" memory with an unlinked file in /dev/shm when that is a tmpfs,
    # else in $TMPDIR (or /tmp).
    if Path("/dev/shm").is_dir():
        return Path("/dev/shm")
    return Path(os.environ.get("TMPDIR") or "/tmp")


def _modules_version() -> str | None:
    versions = sorted(p.name for p in UML_MODULES.iterdir()) if UML_MODULES.is_dir() else []
    return versions[-1] if versions else None


def available(mem: str = "512M") -> str | None:
    """None when UML can boot here, else why not (for ``pytest.skip``).

    Checks only what a boot needs, without booting (about 2 s): the kernel binary, its modules
    (ESP and the crypto come as modules), modprobe, and a writable memory dir with room for
    ``mem``.
    """
    if uml_binary() is None:
        return "user-mode-linux not installed (Debian package user-mode-linux)"
    if _modules_version() is None:
        return f"no UML kernel modules under {UML_MODULES}"
    if not MODPROBE.exists():
        return f"{MODPROBE} missing (Debian package kmod): UML loads ESP and crypto as modules"
    memdir = _memory_dir()
    if not os.access(memdir, os.W_OK | os.X_OK):
        return f"{memdir} not writable (UML keeps its memory there)"
    stat = os.statvfs(memdir)
    if stat.f_bavail * stat.f_frsize < _parse_mem(mem):
        return f"{memdir} has less than {mem} free (UML keeps its memory there)"
    return None


def _parse_mem(mem: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    suffix = mem[-1:].upper()
    return int(mem[:-1]) * units[suffix] if suffix in units else int(mem)


def _tools_command(private: Path) -> str:
    """The command line that runs `_tool_main` inside UML (as ``$UML_TOOLS``, unquoted).

    This file is compiled here, into the private dir, and the bytecode is what runs inside:
    compiling it there costs 0.5 s, and the repository gets no __pycache__ from inside UML.
    -I -S: the tools need only the standard library, and the venv's site setup costs another
    0.3 s there.
    """
    compiled = private / "bin" / "uml_tools.pyc"
    py_compile.compile(__file__, cfile=str(compiled), doraise=True)
    return f"{sys.executable} -I -S {UML_DIR}/bin/{compiled.name}"


def _prepare(
    private: Path,
    script: str,
    files: Mapping[str, str | bytes],
    env: Mapping[str, str],
    modules: Sequence[str],
    on_demand: bool,
) -> Path:
    """Write the init, fstab, modprobe wrapper, module tree and the script; return the init."""
    io = private / "io"
    io.mkdir()
    for name, content in files.items():
        (io / name).write_bytes(content.encode() if isinstance(content, str) else content)
    (io / "script.sh").write_text(script)
    (private / "modroot" / "lib").mkdir(parents=True)
    (private / "modroot" / "lib" / "modules").symlink_to(UML_MODULES)
    (private / "bin").mkdir()
    wrapper = private / "bin" / "modprobe"
    wrapper.write_text(f'#!/bin/sh\nexec {MODPROBE} -d {UML_DIR}/modroot "$@"\n')
    wrapper.chmod(0o755)
    fstab = private / "fstab"
    # fstab escapes blanks in paths as octal.
    where = str(private).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    fstab.write_text(_FSTAB.replace("@PRIVATE@", where).replace("@UML_DIR@", UML_DIR))
    fill = {
        "@UML_DIR@": UML_DIR,
        "@IO_DIR@": IO_DIR,
        "@TOOLS@": shlex.quote(_tools_command(private)),
        "@FSTAB@": shlex.quote(str(fstab)),
        # An empty modprobe path makes the kernel's module requests fail at once (ENOENT).
        "@KERNEL_MODPROBE@": f"{UML_DIR}/bin/modprobe" if on_demand else "",
        "@PRELOAD@": " ".join(shlex.quote(m) for m in modules),
        "@ENV@": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
    }
    text = _INIT
    for marker, value in fill.items():
        text = text.replace(marker, value)
    init = private / "init"
    init.write_text(text)
    init.chmod(0o755)
    return init


def boot(
    script: str,
    *,
    timeout: float,
    mem: str = "512M",
    files: Mapping[str, str | bytes] | None = None,
    env: Mapping[str, str] | None = None,
    modules: Sequence[str] = OVERLAY_MODULES,
    on_demand: bool = False,
) -> UmlResult:
    """Boot UML, run ``script`` (bash, as root) inside, power off; return its status and output.

    ``files`` are written into the private dir first (name -> content), so the script finds
    them in its working directory (`IO_DIR`); files the script writes there are gone once this
    returns, so print what the host must see. ``env`` is exported to the script. ``timeout``
    covers boot, script and power-off; on expiry the whole UML process group is killed.

    ``modules`` are loaded (one ``modprobe -a``) before the script runs; if that fails the
    script does not run and the status is non-zero. Unless ``on_demand``, the kernel does not
    load modules by itself (see OVERLAY_MODULES for why): a script needing more either lists
    them in ``modules`` (e.g. IPTABLES_MODULES) or runs ``modprobe`` itself.
    """
    binary = uml_binary()
    if binary is None:
        raise RuntimeError("user-mode-linux not installed")
    private = Path(tempfile.mkdtemp(prefix="ovnet-uml-"))
    try:
        init = _prepare(private, script, files or {}, env or {}, modules, on_demand)
        return _run(binary, private, init, timeout, mem)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(binary: Path, private: Path, init: Path, timeout: float, mem: str) -> UmlResult:
    io = private / "io"
    argv = [
        str(binary),
        f"mem={mem}",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={init}",
        f"uml_dir={private}",
        "umid=uml",
        "con=null",
        "con0=null,fd:1",
        "ssl=null",
    ]
    console = private / "console.log"
    started = time.monotonic()
    with console.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=private,
        )
    timed_out = not _wait_then_kill_group(proc, started + timeout)
    elapsed = time.monotonic() - started
    status_file = io / "status"
    status = status_file.read_text().strip() if status_file.exists() else ""
    output_file = io / "output"
    return UmlResult(
        returncode=int(status) if status.lstrip("-").isdigit() else NO_STATUS,
        output=output_file.read_text(errors="replace") if output_file.exists() else "",
        console=console.read_text(errors="replace"),
        timed_out=timed_out,
        elapsed=elapsed,
    )


def _wait_then_kill_group(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for the kernel's main process until ``deadline``; True if it exited by itself.

    On timeout it gets SIGTERM first: UML then kills and reaps its helper processes (one per
    UML address space, plus I/O threads) itself; after SIGKILL they would linger as zombies
    until the host's PID 1 reaps them. Either way the process group is then SIGKILLed until no
    member is alive, while the leader is still unreaped (so the group id cannot belong to
    anyone else yet); only then is the leader reaped.
    """
    exited = False
    try:
        exited = _wait_exit(proc.pid, deadline)
    finally:  # also on KeyboardInterrupt: never leave a kernel running
        if not exited:
            os.kill(proc.pid, signal.SIGTERM)
            _wait_exit(proc.pid, time.monotonic() + 3.0)
        give_up = time.monotonic() + 5.0
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if not _live_members(proc.pid) or time.monotonic() >= give_up:
                break
            time.sleep(0.02)
        proc.wait()
    return exited


def _wait_exit(pid: int, deadline: float) -> bool:
    """Whether child ``pid`` exited by ``deadline``, leaving it unreaped (WNOWAIT)."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _live_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not yet dead (zombies excluded: helpers whose
    parent died are reaped by PID 1, not by us)."""
    live = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # After the parenthesised command: state, ppid, pgrp.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            live.append(int(entry.name))
    return live


# --- The probe, run inside UML as ``$UML_TOOLS probe SPEC_JSON``: stdlib only.
#
# Why one process doing everything: a process start costs 0.1 s inside UML and a Python start
# 0.5-0.9 s, so a probe opens its sockets in each namespace itself (from a short-lived thread
# that entered the namespace; a socket keeps the namespace it was made in) and captures, pings,
# sends and receives at once.

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003


def netns_socket(ns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket in network namespace ``ns`` (a name under /run/netns; None: this one)."""
    if ns is None:
        return socket.socket(family, kind, proto)
    made: list[socket.socket | BaseException] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind, proto))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=enter_and_make)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ping(ns: str | None, dst: str, count: int, wait: float, payload: bytes) -> list[float | None]:
    """ICMP echo to ``dst`` from ``ns``: round-trip ms per request, None for no reply."""
    sock = netns_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(wait)
    ident, rtts = os.getpid() & 0xFFFF, list[float | None]()
    with sock:
        for seq in range(1, count + 1):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq)
            sent = time.monotonic()
            sock.sendto(packet + payload, (dst, 0))
            rtt: float | None = None
            while rtt is None and (left := sent + wait - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind == 0 and rid == ident and rseq == seq:
                    rtt = round(1000 * (time.monotonic() - sent), 3)
            rtts.append(rtt)
    return rtts


class _Capture:
    """Counts what crosses one interface: IPv4 protocols, ESP SPIs, UDP per destination port
    (and to 4789), markers."""

    def __init__(self, ns: str | None, iface: str, markers: list[str]) -> None:
        self.sock = netns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((iface, 0))
        self.sock.settimeout(0.05)
        self.markers = [m.encode() for m in markers]
        self.summary: dict[str, Any] = {
            "iface": iface,
            "frames": 0,
            "ip_protos": {},
            "esp_spis": {},
            "udp_4789": 0,
            "udp_ports": {},
            "markers": dict.fromkeys(markers, 0),
        }

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.count(self.sock.recv(65535))
            except TimeoutError:
                continue
        self.sock.close()

    def count(self, frame: bytes) -> None:
        s = self.summary
        s["frames"] += 1
        for marker, name in zip(self.markers, s["markers"], strict=True):
            s["markers"][name] += marker in frame
        if frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
        s["ip_protos"][str(proto)] = s["ip_protos"].get(str(proto), 0) + 1
        if proto == socket.IPPROTO_ESP:
            spi = f"0x{int.from_bytes(ip[ihl : ihl + 4], 'big'):x}"
            s["esp_spis"][spi] = s["esp_spis"].get(spi, 0) + 1
        elif proto == socket.IPPROTO_UDP:
            port = str(int.from_bytes(ip[ihl + 2 : ihl + 4], "big"))
            s["udp_ports"][port] = s["udp_ports"].get(port, 0) + 1
            s["udp_4789"] += port == "4789"


def _receive(sock: socket.socket, into: list[str], stop: threading.Event) -> None:
    sock.settimeout(0.05)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            continue
        into.append(f"{peer[0]} {data.decode(errors='replace')}")
    sock.close()


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Capture, listen, ping and send as ``spec`` says; return what was seen, as JSON data.

    spec keys (all optional): ``capture``: [{"ns", "iface"}]; ``markers``: strings counted
    in captured frames; ``listen``: [{"ns", "port"}] UDP; ``ping``: [{"ns", "dst", "count"}];
    ``send``: [{"ns", "dst", "port", "text" | "hex", "count"}] UDP; ``settle``: seconds to
    keep capturing after the last send (default 0.3). ``ns`` null or absent: UML's root ns.
    """
    stop = threading.Event()
    captures = [
        _Capture(c.get("ns"), c["iface"], spec.get("markers", [])) for c in spec.get("capture", [])
    ]
    received: dict[str, list[str]] = {}
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in captures]
    for listen in spec.get("listen", []):
        sock = netns_socket(listen.get("ns"), socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", listen["port"]))
        into = received.setdefault(f"{listen.get('ns')}:{listen['port']}", [])
        threads.append(threading.Thread(target=_receive, args=(sock, into, stop)))
    for thread in threads:
        thread.start()
    try:
        pings = [
            _ping(p.get("ns"), p["dst"], p.get("count", 3), p.get("wait", 2.0), b"ovnet-uml-ping")
            for p in spec.get("ping", [])
        ]
        for send in spec.get("send", []):
            data = send["text"].encode() if "text" in send else bytes.fromhex(send["hex"])
            with netns_socket(send.get("ns"), socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(send.get("count", 1)):
                    sock.sendto(data, (send["dst"], send["port"]))
                    time.sleep(0.02)
        time.sleep(spec.get("settle", 0.3))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {"ping": pings, "received": received, "capture": [c.summary for c in captures]}


def _tool_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "probe":
        print("usage: uml.py probe SPEC_JSON", file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(_tool_main(sys.argv[1:]))
