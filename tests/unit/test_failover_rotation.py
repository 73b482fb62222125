"""osutil.failover.Rotation as the agent's session uses it: the manager list changes under it
(the managers list themselves, a follower names the leader) and the current one stays current."""

from __future__ import annotations

import pytest

from osutil.failover import Rotation


def test_update_keeps_the_current_address_when_it_is_still_listed() -> None:
    r = Rotation(["a", "b", "c"])
    r.succeeded("b")
    r.update(["b", "d", "a", "b"])
    assert r.addrs == ["b", "d", "a"] and r.current == "b"
    assert list(r.order()) == ["b", "d", "a"]
    r.update(["x", "y"])  # the current one is gone: start from the first
    assert r.current == "x"
    with pytest.raises(ValueError):
        r.update([])


def test_prefer_adds_a_new_address_and_makes_it_next() -> None:
    r = Rotation(["a", "b"])
    r.prefer("c")
    assert r.addrs == ["a", "b", "c"] and r.current == "c"
    r.prefer("a")
    assert r.addrs == ["a", "b", "c"] and list(r.order()) == ["a", "b", "c"]
    assert r.advance() == "b"
