"""The container bed (bench/images.py): podman on a private configuration and store, and the
locally built test image, checked for what a container executor will rely on.

A container started with `--network ns:` serves from inside an existing network namespace
(as a task's container will from its sandbox) with content only the image has; its exit status
is podman's; its PID 1 ignores SIGTERM, so `podman stop` is how it is stopped (exit 137 after
the timeout). Everything the test makes carries its own prefix and is removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bench import images
from tests.support.beds import require

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = f"ovpm{os.getpid()}"
GET = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=1).read().decode(), end='')"
)


@pytest.fixture
def podman() -> Iterator[images.Podman]:
    if os.geteuid() != 0:
        pytest.skip("needs root (podman's rootful store, network namespaces)")
    require(images.available(), "podman cannot run here")
    pm = images.Podman()
    yield pm
    leftovers = pm.run("ps", "-a", "-q", "--filter", f"name={PREFIX}", check=False).stdout
    for cid in leftovers.split():
        pm.run("rm", "-f", cid, check=False)


def test_a_container_serves_the_image_from_an_existing_namespace(
    podman: images.Podman, netns: str
) -> None:
    t0 = time.monotonic()
    tag = images.ensure_image(podman)
    built_s = time.monotonic() - t0
    assert images.ensure_image(podman) == tag  # cached: the same inputs, the same image

    name = f"{PREFIX}-web"
    httpd = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
    proc = subprocess.Popen(
        images.container_argv(podman, name, netns, tag, httpd),
        env=podman.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        started, page = time.monotonic(), ""
        while time.monotonic() - started < 30 and page != images.PAGE:
            res = subprocess.run(
                ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", GET,
                 "http://127.0.0.1:8080/"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            page = res.stdout
            time.sleep(0.05)
        answer_s = time.monotonic() - started
        assert page == images.PAGE, "the page that exists only in the image, from the netns"
        # Its PID 1 (httpd) ignores SIGTERM: `podman stop` gets there with SIGKILL.
        podman.run("stop", "-t", "1", name)
        assert proc.wait(timeout=30) == 137
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The exit status of the container's command is podman's.
    code = subprocess.run(
        images.container_argv(podman, f"{PREFIX}-exit", netns, tag, ["/bin/sh", "-c", "exit 7"]),
        env=podman.env(),
        capture_output=True,
        check=False,
    ).returncode
    assert code == 7
    print(f"\npodman bed: image ready in {built_s:.2f} s, httpd answered after {answer_s:.2f} s")
