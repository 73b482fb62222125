"""A private podman and a locally built test image, for the container tests and benchmarks.

Why: no container registry is reachable here, and the machine's own podman setup must stay
untouched. `Podman` runs Debian's podman (4.3.1) with a configuration and storage of its own:
a private CONTAINERS_CONF (runtime runc: crun refuses this machine's hybrid cgroups, "cgroups
in hybrid mode not supported"; default ulimits lowered to nofile/nproc 1000:1000, since the
defaults fail with "setrlimit RLIMIT_NPROC: Operation not permitted") and its own --root,
--runroot and the vfs storage driver.

`ensure_image` builds the test image from Debian's busybox-static, with no registry: a rootfs
holding busybox (sh, httpd, sleep, wget...) and a page that exists only in the image, made a
tar archive and `podman import`ed. Its tag is a hash of its inputs (the busybox binary, the page, a
version), so an image in the store is reused only while it is what this code would build.
The store lives under /var/cache/ovnet-tests (the cache CI may keep between runs).

Facts measured with it (2026-12-04): `podman run --rm --network ns:/run/netns/X` puts the
container in an existing namespace (how a task's container will join its sandbox); the exit
status passes through; busybox httpd answered 0.23 s after `podman run` started. The image's
PID 1 ignores SIGTERM (a container's PID 1 gets no default signal actions), so SIGTERM to an
attached `podman run` stops nothing: `podman stop -t N` (SIGTERM, then SIGKILL) does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.executor.container import Podman as AgentPodman

CACHE = Path("/var/cache/ovnet-tests/podman")
BUSYBOX = Path("/bin/busybox")
# Bump when the image's content or layout changes (it is part of the tag).
IMAGE_VERSION = 3
IMAGE_NAME = "localhost/ovnet-test-httpd"
# The page the image serves at / (httpd -h /www), and at /page.html from its own command:
# content that exists only in the image.
PAGE = "ovnet test image: this page exists only in the image\n"
APPLETS = ("sh", "httpd", "sleep", "wget", "cat", "echo", "hostname", "nc", "kill")
# The image's own command: httpd on port 8080 serving /who, where / runs a CGI script that
# answers "CONTAINER-HOSTNAME CLIENT-ADDRESS" (the shape tests/e2e/loadclient.py counts by
# replica), /page.html is PAGE and /release the image's release. PID 1 is a shell that ends
# httpd on SIGTERM and exits 0 (a PID 1 that does not handle SIGTERM ignores it).
PORT = 8080
SERVE = f"""#!/bin/sh
httpd -f -p 0.0.0.0:{PORT} -h /who &
trap 'kill $!; exit 0' TERM
wait
"""
WHO_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n%s %s\\n' "$(hostname)" "$REMOTE_ADDR"
"""

CONTAINERS_CONF = """\
# Written by bench/images.py: podman for ovnet's tests, apart from the machine's own setup.
[containers]
default_ulimits = ["nofile=1000:1000", "nproc=1000:1000"]

[engine]
runtime = "runc"
"""


def available() -> str | None:
    """None when podman, runc and busybox-static are here; else what is missing."""
    missing = [p for p in ("podman", "runc") if shutil.which(p) is None]
    if not BUSYBOX.exists():
        missing.append("busybox (Debian package busybox-static)")
    return f"missing: {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class Podman:
    """podman with this project's private configuration and storage under ``home``."""

    home: Path = CACHE

    @property
    def conf(self) -> Path:
        return self.home / "containers.conf"

    def config(self) -> AgentPodman:
        """The same podman as the agent's executor describes it (what its --containers-conf,
        --podman-root, --podman-runroot and --podman-storage-driver say), with no pulls: no
        registry is reachable here, and an image missing from the store is an error at once."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not self.conf.exists() or self.conf.read_text() != CONTAINERS_CONF:
            self.conf.write_text(CONTAINERS_CONF)
        return AgentPodman(
            containers_conf=str(self.conf),
            root=str(self.home / "root"),
            runroot=str(self.home / "run"),
            storage_driver="vfs",
            pull="never",
        )

    def agent_args(self) -> list[str]:
        """The agent's command-line flags for this podman."""
        c = self.config()
        return [
            "--containers-conf", c.containers_conf,
            "--podman-root", c.root,
            "--podman-runroot", c.runroot,
            "--podman-storage-driver", c.storage_driver,
            "--image-pull", c.pull,
        ]  # fmt: skip

    def argv(self, *args: str) -> list[str]:
        return self.config().argv(*args)

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])}: exit {res.returncode}: {res.stderr}")
        return res


def image_tag(release: int = 1) -> str:
    """The test image's name:tag, a hash of what goes into it. Releases differ only in the
    /who/release file: a second tag to roll a service to."""
    parts = (IMAGE_VERSION, PAGE, ",".join(APPLETS), SERVE, WHO_CGI, release)
    h = hashlib.sha256("\0".join(map(str, parts)).encode())
    h.update(BUSYBOX.read_bytes())
    return f"{IMAGE_NAME}:{h.hexdigest()[:12]}"


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_image(podman: Podman | None = None, release: int = 1) -> str:
    """The test image in ``podman``'s store (imported if missing); its name:tag."""
    podman = podman or Podman()
    tag = image_tag(release)
    with _lock(podman.home / "build.lock"):
        if podman.run("image", "exists", tag, check=False).returncode == 0:
            return tag
        with tempfile.TemporaryDirectory(prefix="ovnet-image-") as tmp:
            root = Path(tmp) / "rootfs"
            (root / "bin").mkdir(parents=True)
            shutil.copy2(BUSYBOX, root / "bin" / "busybox")
            for applet in APPLETS:
                (root / "bin" / applet).symlink_to("busybox")
            (root / "www").mkdir()
            (root / "www" / "index.html").write_text(PAGE)
            (root / "who" / "cgi-bin").mkdir(parents=True)
            (root / "who" / "page.html").write_text(PAGE)
            (root / "who" / "release").write_text(f"{release}\n")
            for path, text in (
                (root / "who/cgi-bin/index.cgi", WHO_CGI),
                (root / "bin/serve", SERVE),
            ):
                path.write_text(text)
                path.chmod(0o755)
            archive = Path(tmp) / "rootfs.tar"
            subprocess.run(
                ["tar", "-C", str(root), "--owner=0", "--group=0", "-cf", str(archive), "."],
                check=True,
            )
            podman.run("import", "--change", 'CMD ["/bin/serve"]', str(archive), tag)
    return tag


def container_argv(
    podman: Podman, name: str, netns: str, image: str, cmd: Sequence[str]
) -> list[str]:
    """`podman run --rm` of ``image`` in the existing network namespace ``netns`` (a name
    under /run/netns), attached (its exit status is podman's)."""
    return podman.argv(
        "run", "--rm", "--name", name, "--network", f"ns:/run/netns/{netns}", image, *cmd
    )
