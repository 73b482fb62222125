"""Per-network tables: ownership, Lamport times, tombstones, visibility, refutation."""

from __future__ import annotations

import pytest

from agent.gossip.common import Outcome
from agent.gossip.events import EntryChanged
from agent.gossip.tables import Entry, Tables
from agent.gossip.wire import EntryMsg, NetMsg


class World:
    """A Tables under test plus the liveness it asks about."""

    def __init__(self) -> None:
        self.alive = {"a", "b", "c"}
        self.events: list[EntryChanged] = []
        self.t = Tables("me", lambda n: n in self.alive, self.events.append)

    def take(self) -> list[tuple[str, str, bytes | None]]:
        out = [(e.key, e.owner, e.value) for e in self.events]
        self.events.clear()
        return out


def joined(w: World, *owners: str, net: str = "net") -> None:
    w.t.join(net)
    for o in owners:
        assert w.t.apply_net(NetMsg(o, net, 1, True)) == (Outcome.CHANGED, None)


def test_put_delete_and_events() -> None:
    w = World()
    with pytest.raises(KeyError):
        w.t.put("net", "k", b"v")
    msg = w.t.join("net")
    assert msg == NetMsg("me", "net", 1, True) and w.t.join("net") is None
    e = w.t.put("net", "k", b"v1")
    assert (e.owner, e.ltime, e.deleted) == ("me", 1, False)
    assert w.take() == [("k", "me", b"v1")]
    w.t.put("net", "k", b"v1")  # same value, newer time: no visible change
    assert w.take() == []
    w.t.put("net", "k", b"v2")
    assert w.take() == [("k", "me", b"v2")]
    tomb = w.t.delete("net", "k")
    assert tomb is not None and tomb.deleted and tomb.ltime == 4
    assert w.take() == [("k", "me", None)]
    assert w.t.delete("net", "k") is None and w.t.delete("net", "other") is None
    assert w.t.entries("net") == {}


def test_remote_entries_newest_wins_and_clock_advances() -> None:
    w = World()
    joined(w, "a")
    assert w.t.apply_entry(EntryMsg("net", "k", "a", 5, False, b"x"))[0] == Outcome.CHANGED
    assert w.t.apply_entry(EntryMsg("net", "k", "a", 4, False, b"old")) == (Outcome.IGNORED, None)
    assert w.t.apply_entry(EntryMsg("net", "k", "a", 5, False, b"x")) == (Outcome.IGNORED, None)
    assert w.t.apply_entry(EntryMsg("net", "k", "a", 6, True, b""))[0] == Outcome.CHANGED
    assert w.take() == [("k", "a", b"x"), ("k", "a", None)]
    # A stale live version does not resurrect the tombstone.
    assert w.t.apply_entry(EntryMsg("net", "k", "a", 5, False, b"x")) == (Outcome.IGNORED, None)
    assert w.t.entries("net") == {}
    assert w.t.put("net", "mine", b"v").ltime == 7  # Lamport: after everything seen


def test_entries_of_other_networks_are_not_stored() -> None:
    w = World()
    joined(w, "a", net="red")
    assert w.t.apply_entry(EntryMsg("blue", "k", "a", 1, False, b"x")) == (Outcome.NOT_MINE, None)
    assert w.t.entry_records(["blue", "red"]) == []


def test_visibility_follows_owner_liveness_and_participation() -> None:
    w = World()
    joined(w, "a")
    w.t.apply_entry(EntryMsg("net", "k", "a", 1, False, b"x"))
    w.t.apply_entry(EntryMsg("net", "j", "b", 1, False, b"y"))  # b not in the network yet
    assert w.take() == [("k", "a", b"x")]
    w.t.apply_net(NetMsg("b", "net", 1, True))
    assert w.take() == [("j", "b", b"y")]
    w.alive.discard("a")
    w.t.owner_changed("a")
    assert w.take() == [("k", "a", None)]
    assert "k" not in w.t.entries("net") and len(w.t.stored("net")) == 2  # kept, hidden
    w.alive.add("a")
    w.t.owner_changed("a")
    assert w.take() == [("k", "a", b"x")]
    w.t.apply_net(NetMsg("b", "net", 2, False))  # b left the network
    assert w.take() == [("j", "b", None)]
    assert w.t.apply_net(NetMsg("b", "net", 1, True)) == (Outcome.IGNORED, None)  # stale


def test_several_owners_of_one_key_newest_visible_wins() -> None:
    w = World()
    joined(w, "a", "b")
    w.t.apply_entry(EntryMsg("net", "k", "a", 5, False, b"from-a"))
    w.t.apply_entry(EntryMsg("net", "k", "b", 3, False, b"from-b"))
    assert w.t.entries("net")["k"].owner == "a"
    w.alive.discard("a")
    w.t.owner_changed("a")  # a's claim hides: b's shows
    assert w.t.entries("net")["k"].value == b"from-b"
    assert w.take() == [("k", "a", b"from-a"), ("k", "b", b"from-b")]
    w.t.apply_entry(EntryMsg("net", "k", "b", 4, True, b""))
    assert w.take() == [("k", "b", None)]


def test_restarted_owner_tombstones_what_it_no_longer_holds() -> None:
    w = World()
    joined(w)
    code, e = w.t.apply_entry(EntryMsg("net", "old", "me", 40, False, b"stale"))
    assert code == Outcome.REFUTE and e is not None
    assert (e.deleted, e.ltime) == (True, 41)
    assert w.t.entries("net") == {} and w.take() == []
    # Our own tombstone coming back: we agree, adopt it (no new write).
    code, e = w.t.apply_entry(EntryMsg("net", "gone", "me", 50, True, b""))
    assert code == Outcome.CHANGED and e is not None and e.ltime == 50


def test_owner_reasserts_a_value_it_holds() -> None:
    w = World()
    joined(w)
    mine = w.t.put("net", "k", b"current")  # ltime 1 after a restart
    code, e = w.t.apply_entry(EntryMsg("net", "k", "me", 30, False, b"previous life"))
    assert code == Outcome.REFUTE and e is not None
    assert (e.value, e.deleted) == (b"current", False) and e.ltime == 31 > mine.ltime
    assert w.t.entries("net")["k"].value == b"current"
    # The same time with another value (two lives wrote ltime 31) is also refuted.
    code, e = w.t.apply_entry(EntryMsg("net", "k", "me", 31, False, b"twin"))
    assert code == Outcome.REFUTE and e is not None and e.ltime == 32
    # Our own echo is not.
    assert w.t.apply_entry(EntryMsg("net", "k", "me", 32, False, b"current"))[0] == Outcome.IGNORED


def test_participation_refute_after_restart() -> None:
    w = World()
    # Peers still think we are in "old" (from our previous life): we say we are not.
    code, msg = w.t.apply_net(NetMsg("me", "old", 9, True))
    assert code == Outcome.REFUTE and msg == NetMsg("me", "old", 10, False)
    assert w.t.apply_net(NetMsg("me", "old", 5, False)) == (Outcome.IGNORED, None)
    w.t.join("net")
    code, msg = w.t.apply_net(NetMsg("me", "net", 20, False))
    assert code == Outcome.REFUTE and msg is not None and msg.joined and msg.ltime == 21


def test_leave_tombstones_own_entries_and_hides_the_table() -> None:
    w = World()
    joined(w, "a")
    w.t.put("net", "k1", b"1")
    w.t.put("net", "k2", b"2")
    w.t.delete("net", "k2")
    w.t.apply_entry(EntryMsg("net", "r", "a", 1, False, b"r"))
    w.take()
    msg, tombs = w.t.leave("net")
    assert msg is not None and not msg.joined
    assert [(t.key, t.deleted) for t in tombs] == [("k1", True)]
    assert sorted(w.take()) == [("k1", "me", None), ("r", "a", None)]
    assert w.t.networks() == [] and w.t.entries("net") == {}
    assert w.t.leave("net") == (None, [])
    with pytest.raises(KeyError):
        w.t.put("net", "k", b"v")


def test_reap_and_forget() -> None:
    w = World()
    joined(w, "a")
    w.t.apply_entry(EntryMsg("net", "k", "a", 2, True, b""))
    assert not w.t.reap("net", "k", "a", 1)  # not the stored version
    assert w.t.reap("net", "k", "a", 2)
    assert w.t.stored("net") == []
    w.t.apply_entry(EntryMsg("net", "j", "a", 3, False, b"v"))
    assert not w.t.reap("net", "j", "a", 3)  # live entries are not reaped
    w.t.forget_owner("a")
    assert w.t.stored("net") == [] and w.take()[-1] == ("j", "a", None)
    assert ("a", "net") not in {(n.node, n.network) for n in w.t.net_records()}
    ps = w.t.participants("net")
    assert ps is not None and "a" not in ps


def test_records_for_push_pull() -> None:
    w = World()
    joined(w, "a")
    w.t.put("net", "k", b"v")
    recs = w.t.entry_records(["net"])
    assert recs == [EntryMsg("net", "k", "me", 1, False, b"v")]
    count, blob = w.t.net_records_wire()
    assert count == 2 and len(blob) > 0
    assert Entry("n", "k", "o", 1, b"v", False).to_msg() == EntryMsg("n", "k", "o", 1, False, b"v")
