"""Fixtures for tests on booted Debian 12 nodes (tests/nodes/bed.py says how they are made).

    node_rootfs       the cached rootfs (built on first use, ~1 min; then reused)
    node_bed_factory  make_bed(count=3, **kwargs) -> a started NodeBed, closed after the test
    node_bed          three started nodes, closed after the test

Where nspawn cannot run (not root, no systemd-container, no overlayfs) the tests skip, except
under CI=true, where they fail: CI runs scripts/install.sh, which installs systemd-container
and debootstrap, so their absence there is a broken setup, not a reason to test less.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.nodes import bed
from tests.support.beds import require


@pytest.fixture(scope="session")
def node_rootfs() -> bed.Rootfs:
    """The cached rootfs; also removes the beds of earlier runs that died without cleaning."""
    require(bed.available(), "cannot boot nspawn nodes here")
    bed.sweep_dead_runs()
    return bed.ensure_rootfs()


@pytest.fixture
def node_bed_factory(node_rootfs: bed.Rootfs) -> Iterator[Callable[..., bed.NodeBed]]:
    """Start beds on demand; every one is closed when the test ends, passed or not."""
    beds: list[bed.NodeBed] = []

    def make_bed(count: int = 3, **kwargs: Any) -> bed.NodeBed:
        node_bed = bed.NodeBed(count, rootfs=node_rootfs.path, **kwargs)
        beds.append(node_bed)
        return node_bed.start()

    yield make_bed
    for node_bed in reversed(beds):
        node_bed.close()


@pytest.fixture
def node_bed(node_bed_factory: Callable[..., bed.NodeBed]) -> bed.NodeBed:
    """Three booted nodes (node1..node3) on one bridge."""
    return node_bed_factory(3)
