"""The load balancer's planner: nft scripts and index bookkeeping, without a kernel."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lb.plan import (
    LbSpec,
    LbState,
    PortTarget,
    reassign,
    render_delete,
    render_full,
    render_update,
)

T = "ovnet-lb"
SANDBOX = LbSpec(vips={"10.0.0.2": ("10.0.1.3", "10.0.1.4", "10.0.1.5")})
INGRESS = LbSpec(
    ports={("tcp", 8080): PortTarget(80, ("10.1.0.7", "10.1.0.8"))},
    hooks=frozenset({"prerouting"}),
    masquerade_oif="eth0",
)


def lines(script: str) -> list[str]:
    return [ln for ln in script.splitlines() if ln.strip()]


def map_elements(state: LbState) -> dict[str, dict[int, str]]:
    """What the named maps hold according to a state: map name -> index -> backend."""
    out = {f"v_{v.replace('.', '_')}": dict(enumerate(s)) for v, s in state.vips}
    out |= {f"p_{k[0]}_{k[1]}": dict(enumerate(p.backends)) for k, p in state.ports}
    return {k: v for k, v in out.items() if v}


def apply_script(tables: dict[str, dict[int, str]], script: str) -> None:
    """A tiny interpreter of the element statements of an update script, to check that the
    script (not only the returned state) turns the old maps into the new ones."""
    for ln in lines(script):
        if m := re.fullmatch(
            r"add map ip \S+ (\S+) \{ typeof [^;]*;(?: elements = \{ (.*) \})? \}", ln
        ):
            assert m.group(1) not in tables, ln
            tables[m.group(1)] = {}
            for pair in (m.group(2) or "").split(", "):
                if pair:
                    i, ip = pair.split(" : ")
                    tables[m.group(1)][int(i)] = ip
        elif m := re.fullmatch(r"delete map ip \S+ (\S+)", ln):
            del tables[m.group(1)]
        elif m := re.fullmatch(r"delete element ip \S+ ([vp]_\S+) \{ (.*) \}", ln):
            for i in m.group(2).split(", "):
                del tables[m.group(1)][int(i)]
        elif m := re.fullmatch(r"add element ip \S+ ([vp]_\S+) \{ (.*) \}", ln):
            for pair in m.group(2).split(", "):
                i, ip = pair.split(" : ")
                assert int(i) not in tables[m.group(1)], ln
                tables[m.group(1)][int(i)] = ip


def rule_moduli(script: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"add rule ip \S+ (\S+) .*numgen random mod (\d+) map @\1", script)
    }


# --------------------------------------------------------------------------------------------
# Full render


def test_full_replaces_table_in_one_script() -> None:
    script, state = render_full(T, SANDBOX)
    ls = lines(script)
    assert ls[:3] == [f"table ip {T} {{}}", f"delete table ip {T}", f"table ip {T} {{"]
    assert "map v_10_0_0_2 { typeof numgen random mod 1 : ip daddr; elements = " in script
    assert "0 : 10.0.1.3, 1 : 10.0.1.4, 2 : 10.0.1.5" in script
    assert "chain v_10_0_0_2 { dnat to numgen random mod 3 map @v_10_0_0_2; }" in script
    assert "type nat hook output priority -100" in script
    assert "prerouting" not in script
    assert "masquerade" not in script
    # The verdict element comes after the block that declares its chain.
    assert ls[-1] == f"add element ip {T} vips {{ 10.0.0.2 : goto v_10_0_0_2 }}"
    assert state.vip_map() == {"10.0.0.2": ("10.0.1.3", "10.0.1.4", "10.0.1.5")}


def test_full_ingress_ports_prerouting_and_masquerade() -> None:
    script, state = render_full(T, INGRESS)
    assert "meta l4proto tcp dnat to numgen random mod 2 map @p_tcp_8080 : 80;" in script
    assert "type nat hook prerouting priority -100" in script
    assert "hook output" not in script
    assert 'oifname "eth0" ct status dnat masquerade' in script
    assert "fib daddr" not in script
    assert f"add element ip {T} ports {{ tcp . 8080 : goto p_tcp_8080 }}" in script
    assert state.port_map()[("tcp", 8080)] == PortTarget(80, ("10.1.0.7", "10.1.0.8"))


def test_full_host_kind_matches_local_destinations_on_both_hooks() -> None:
    spec = LbSpec(
        ports={("udp", 53): PortTarget(5353, ("198.51.100.230",))},
        hooks=frozenset({"prerouting", "output"}),
        local_only=True,
    )
    script, _ = render_full(T, spec)
    for hook in ("prerouting", "output"):
        assert f"chain nat_{hook} {{ type nat hook {hook} priority -100;" in script
        assert f"chain filter_{hook} {{ type filter hook {hook} priority -110;" in script
    assert "fib daddr type local meta l4proto . th dport vmap @ports" in script


def test_backends_are_deduplicated_and_canonical_and_sorted_numerically() -> None:
    spec = LbSpec(vips={"10.0.0.2": ("10.0.0.10", "10.0.0.9", "10.0.0.10")})
    _, state = render_full(T, spec)
    assert state.vip_map()["10.0.0.2"] == ("10.0.0.9", "10.0.0.10")


def test_zero_backends_render_the_reject_path() -> None:
    spec = LbSpec(vips={"10.0.0.2": ()}, ports={("udp", 53): PortTarget(53, ())})
    script, state = render_full(T, spec)
    assert "set dead_vips { type ipv4_addr; elements = { 10.0.0.2 } }" in script
    assert "set dead_ports { type inet_proto . inet_service; elements = { udp . 53 } }" in script
    assert "v_10_0_0_2" not in script and "p_udp_53" not in script
    assert "ct state new ip daddr @dead_vips meta l4proto tcp reject with tcp reset" in script
    assert "ct state new ip daddr @dead_vips reject;" in script
    assert "th dport @dead_ports reject;" in script
    assert "add element" not in script
    assert state.vip_map() == {"10.0.0.2": ()}


@pytest.mark.parametrize(
    "spec",
    [
        LbSpec(vips={"10.0.0.300": ()}),
        LbSpec(vips={"10.0.0.2": ("not-an-ip",)}),
        LbSpec(ports={("sctp", 80): PortTarget(80, ())}),
        LbSpec(ports={("tcp", 0): PortTarget(80, ())}),
        LbSpec(ports={("tcp", 80): PortTarget(70000, ())}),
        LbSpec(hooks=frozenset({"input"})),
        LbSpec(hooks=frozenset()),
        LbSpec(masquerade_oif='eth0"; flush ruleset'),
    ],
)
def test_invalid_specs_are_refused(spec: LbSpec) -> None:
    with pytest.raises(ValueError):
        render_full(T, spec)


@pytest.mark.parametrize("table", ["", "1abc", "a b", "x;flush ruleset", "a" * 65])
def test_invalid_table_names_are_refused(table: str) -> None:
    with pytest.raises(ValueError):
        render_full(table, LbSpec())
    with pytest.raises(ValueError):
        render_delete(table)


def test_delete_is_idempotent_form() -> None:
    assert render_delete(T) == f"table ip {T} {{}}\ndelete table ip {T}\n"


# --------------------------------------------------------------------------------------------
# Updates


def test_unchanged_spec_is_empty_script() -> None:
    for spec in (SANDBOX, INGRESS, LbSpec(vips={"10.0.0.2": ()})):
        _, state = render_full(T, spec)
        assert render_update(T, state, spec) == ("", state)


def test_order_of_backends_in_spec_is_irrelevant() -> None:
    _, state = render_full(T, SANDBOX)
    shuffled = LbSpec(vips={"10.0.0.2": ("10.0.1.5", "10.0.1.3", "10.0.1.4", "10.0.1.3")})
    assert render_update(T, state, shuffled)[0] == ""


def test_add_one_backend_is_one_element_and_one_rule() -> None:
    _, state = render_full(T, SANDBOX)
    spec = LbSpec(vips={"10.0.0.2": ("10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.2")})
    script, new = render_update(T, state, spec)
    assert lines(script) == [
        f"add element ip {T} v_10_0_0_2 {{ 3 : 10.0.1.2 }}",
        f"flush chain ip {T} v_10_0_0_2",
        f"add rule ip {T} v_10_0_0_2 dnat to numgen random mod 4 map @v_10_0_0_2",
    ]
    assert new.vip_map()["10.0.0.2"] == ("10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.2")
    assert render_update(T, new, spec)[0] == ""


def test_add_one_backend_touches_only_its_service() -> None:
    spec = LbSpec(vips={"10.0.0.2": ("10.0.1.3",), "10.0.0.3": ("10.0.2.3",)})
    _, state = render_full(T, spec)
    spec2 = LbSpec(vips={"10.0.0.2": ("10.0.1.3",), "10.0.0.3": ("10.0.2.3", "10.0.2.4")})
    script, _ = render_update(T, state, spec2)
    assert "v_10_0_0_2" not in script
    assert all("v_10_0_0_3" in ln for ln in lines(script))


def test_remove_middle_backend_moves_the_last_into_its_index() -> None:
    backends = tuple(f"10.0.1.{i}" for i in range(1, 6))  # indices 0..4
    spec = LbSpec(vips={"10.0.0.2": backends})
    _, state = render_full(T, spec)
    spec2 = LbSpec(vips={"10.0.0.2": tuple(b for b in backends if b != "10.0.1.2")})
    script, new = render_update(T, state, spec2)
    assert new.vip_map()["10.0.0.2"] == ("10.0.1.1", "10.0.1.5", "10.0.1.3", "10.0.1.4")
    assert lines(script) == [
        f"delete element ip {T} v_10_0_0_2 {{ 1, 4 }}",
        f"add element ip {T} v_10_0_0_2 {{ 1 : 10.0.1.5 }}",
        f"flush chain ip {T} v_10_0_0_2",
        f"add rule ip {T} v_10_0_0_2 dnat to numgen random mod 4 map @v_10_0_0_2",
    ]


def test_remove_last_backend_index_is_one_delete() -> None:
    _, state = render_full(T, SANDBOX)
    script, new = render_update(T, state, LbSpec(vips={"10.0.0.2": ("10.0.1.3", "10.0.1.4")}))
    assert lines(script)[0] == f"delete element ip {T} v_10_0_0_2 {{ 2 }}"
    assert "add element" not in script
    assert new.vip_map()["10.0.0.2"] == ("10.0.1.3", "10.0.1.4")


def test_replace_one_backend_reuses_its_index_without_changing_the_rule() -> None:
    _, state = render_full(T, SANDBOX)
    spec = LbSpec(vips={"10.0.0.2": ("10.0.1.3", "10.0.1.9", "10.0.1.5")})
    script, new = render_update(T, state, spec)
    assert lines(script) == [
        f"delete element ip {T} v_10_0_0_2 {{ 1 }}",
        f"add element ip {T} v_10_0_0_2 {{ 1 : 10.0.1.9 }}",
    ]
    assert new.vip_map()["10.0.0.2"] == ("10.0.1.3", "10.0.1.9", "10.0.1.5")


def test_new_and_removed_vip() -> None:
    _, state = render_full(T, SANDBOX)
    spec = LbSpec(vips={"10.0.0.7": ("10.0.3.1", "10.0.3.2")})
    script, new = render_update(T, state, spec)
    assert lines(script) == [
        f"delete element ip {T} vips {{ 10.0.0.2 }}",
        f"flush chain ip {T} v_10_0_0_2",
        f"delete chain ip {T} v_10_0_0_2",
        f"delete map ip {T} v_10_0_0_2",
        f"add map ip {T} v_10_0_0_7 {{ typeof numgen random mod 1 : ip daddr; "
        "elements = { 0 : 10.0.3.1, 1 : 10.0.3.2 } }",
        f"add chain ip {T} v_10_0_0_7",
        f"add rule ip {T} v_10_0_0_7 dnat to numgen random mod 2 map @v_10_0_0_7",
        f"add element ip {T} vips {{ 10.0.0.7 : goto v_10_0_0_7 }}",
    ]
    assert new.vip_map() == {"10.0.0.7": ("10.0.3.1", "10.0.3.2")}


def test_new_and_removed_port() -> None:
    _, state = render_full(T, INGRESS)
    spec = LbSpec(
        ports={("udp", 53): PortTarget(5353, ("10.1.0.9",))},
        hooks=frozenset({"prerouting"}),
        masquerade_oif="eth0",
    )
    script, new = render_update(T, state, spec)
    assert f"delete element ip {T} ports {{ tcp . 8080 }}" in script
    assert f"delete map ip {T} p_tcp_8080" in script
    assert (
        f"add rule ip {T} p_udp_53 meta l4proto udp dnat to numgen random mod 1 map @p_udp_53 "
        ": 5353" in script
    )
    assert f"add element ip {T} ports {{ udp . 53 : goto p_udp_53 }}" in script
    assert list(new.port_map()) == [("udp", 53)]


def test_target_port_change_replaces_only_the_rule() -> None:
    _, state = render_full(T, INGRESS)
    spec = LbSpec(
        ports={("tcp", 8080): PortTarget(81, ("10.1.0.7", "10.1.0.8"))},
        hooks=INGRESS.hooks,
        masquerade_oif="eth0",
    )
    script, new = render_update(T, state, spec)
    assert lines(script) == [
        f"flush chain ip {T} p_tcp_8080",
        f"add rule ip {T} p_tcp_8080 meta l4proto tcp dnat to numgen random mod 2 "
        "map @p_tcp_8080 : 81",
    ]
    assert new.port_map()[("tcp", 8080)].target_port == 81


def test_last_backend_gone_moves_target_to_reject_set_and_back() -> None:
    _, state = render_full(T, SANDBOX)
    dead = LbSpec(vips={"10.0.0.2": ()})
    script, mid = render_update(T, state, dead)
    assert lines(script) == [
        f"delete element ip {T} vips {{ 10.0.0.2 }}",
        f"flush chain ip {T} v_10_0_0_2",
        f"delete chain ip {T} v_10_0_0_2",
        f"delete map ip {T} v_10_0_0_2",
        f"add element ip {T} dead_vips {{ 10.0.0.2 }}",
    ]
    assert mid.vip_map() == {"10.0.0.2": ()}
    script, back = render_update(T, mid, SANDBOX)
    assert lines(script)[0] == f"delete element ip {T} dead_vips {{ 10.0.0.2 }}"
    assert f"add element ip {T} vips {{ 10.0.0.2 : goto v_10_0_0_2 }}" in script
    assert back == state
    # Dead and then forgotten: only the reject element goes.
    script, gone = render_update(T, mid, LbSpec())
    assert lines(script) == [f"delete element ip {T} dead_vips {{ 10.0.0.2 }}"]
    assert gone.vips == ()


def test_structural_change_is_a_full_replace() -> None:
    _, state = render_full(T, INGRESS)
    for spec in (
        LbSpec(ports=INGRESS.ports, hooks=frozenset({"prerouting"}), masquerade_oif="eth1"),
        LbSpec(ports=INGRESS.ports, hooks=frozenset({"prerouting", "output"})),
        LbSpec(ports=INGRESS.ports, hooks=INGRESS.hooks, masquerade_oif="eth0", local_only=True),
    ):
        assert render_update(T, state, spec) == render_full(T, spec)
    assert render_update("other", state, INGRESS) == render_full("other", INGRESS)


# --------------------------------------------------------------------------------------------
# Index bookkeeping


def test_reassign_fills_holes_with_new_backends_first() -> None:
    old = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")
    new = reassign(old, frozenset({"10.0.0.1", "10.0.0.3", "10.0.0.4", "10.0.0.9"}))
    assert new == ("10.0.0.1", "10.0.0.9", "10.0.0.3", "10.0.0.4")


def test_reassign_compacts_several_holes() -> None:
    old = tuple(f"10.0.0.{i}" for i in range(1, 7))
    new = reassign(old, frozenset({"10.0.0.2", "10.0.0.4", "10.0.0.6"}))
    assert new == ("10.0.0.6", "10.0.0.2", "10.0.0.4")


_pool = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(40)]
_backend_sets = st.frozensets(st.sampled_from(_pool), max_size=12)
_specs = st.builds(
    lambda vips, ports: LbSpec(
        vips=vips, ports={k: PortTarget(t, tuple(b)) for k, (t, b) in ports.items()}
    ),
    st.dictionaries(st.sampled_from(["10.9.0.1", "10.9.0.2", "10.9.0.3"]), _backend_sets),
    st.dictionaries(
        st.tuples(st.sampled_from(["tcp", "udp"]), st.sampled_from([80, 443])),
        st.tuples(st.sampled_from([80, 8080]), _backend_sets),
    ),
)


def _check_against_full(state: LbState, spec: LbSpec) -> None:
    _, full = render_full(T, spec)
    assert state.vip_map().keys() == full.vip_map().keys()
    assert state.port_map().keys() == full.port_map().keys()
    for vip, slots in state.vips:
        assert sorted(slots) == sorted(full.vip_map()[vip])
        assert len(set(slots)) == len(slots)
    for key, target in state.ports:
        assert sorted(target.backends) == sorted(full.port_map()[key].backends)
        assert target.target_port == full.port_map()[key].target_port


@settings(max_examples=200, deadline=None)
@given(st.lists(_specs, min_size=1, max_size=8))
def test_updates_reach_the_same_maps_as_a_full_render(specs: list[LbSpec]) -> None:
    script, state = render_full(T, specs[0])
    tables = map_elements(state)
    for spec in specs[1:]:
        prev = state
        script, state = render_update(T, prev, spec)
        apply_script(tables, script)
        # The script's element statements produce exactly the state's maps (dense 0..N-1).
        assert tables == map_elements(state)
        _check_against_full(state, spec)
        # Every map whose size changed gets a rule with the new modulus.
        for name, n in rule_moduli(script).items():
            assert len(tables[name]) == n
        for name, elems in tables.items():
            old = map_elements(prev).get(name, {})
            if len(old) != len(elems):
                assert rule_moduli(script).get(name) == len(elems), (name, script)
        # Survivors keep their index unless it is beyond the new size (moved into a hole).
        now_maps = map_elements(state)
        for name, old in map_elements(prev).items():
            now = now_maps.get(name, {})
            kept = set(now.values())
            for i, b in old.items():
                if b in kept and i < len(now):
                    assert now[i] == b, (name, i, b)
        assert render_update(T, state, spec)[0] == ""


def test_seeded_random_walk_matches_full_render() -> None:
    rng = random.Random(4)
    _, state = render_full(T, LbSpec())
    for _ in range(300):
        vips = {
            v: tuple(rng.sample(_pool, rng.randint(0, 15)))
            for v in rng.sample(["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"], rng.randint(0, 4))
        }
        spec = LbSpec(vips=vips)
        _, state = render_update(T, state, spec)
        _check_against_full(state, spec)
        assert render_update(T, state, spec)[0] == ""


def test_host_ports_bound_to_one_address_have_their_own_verdict_map() -> None:
    """`ovctl run -p 127.0.0.1:8081:80`: matched on (address, protocol, port) before the
    any-address ports; with no backend, rejected on that address only."""
    bound = {
        ("tcp", 8081): PortTarget(80, ("172.18.0.5",), "127.0.0.1"),
        ("udp", 53): PortTarget(53, (), "198.51.100.5"),
        ("tcp", 8082): PortTarget(80, ("172.18.0.6",)),
    }
    spec = LbSpec(ports=bound, hooks=frozenset({"prerouting", "output"}), local_only=True)
    script, state = render_full(T, spec)
    assert (
        f"add element ip {T} bound_ports {{ 127.0.0.1 . tcp . 8081 : goto p_tcp_8081 }}" in script
    )
    assert f"add element ip {T} ports {{ tcp . 8082 : goto p_tcp_8082 }}" in script
    assert "set dead_bound { type ipv4_addr . inet_proto . inet_service; " in script
    assert "elements = { 198.51.100.5 . udp . 53 }" in script
    assert (
        "ip daddr . meta l4proto . th dport vmap @bound_ports; "
        "fib daddr type local meta l4proto . th dport vmap @ports;" in script
    )
    assert state.port_map()[("tcp", 8081)].addr == "127.0.0.1"
    # One more backend: an element, as for any port.
    more = dict(bound)
    more[("tcp", 8081)] = PortTarget(80, ("172.18.0.5", "172.18.0.7"), "127.0.0.1")
    update, _ = render_update(T, state, LbSpec(ports=more, hooks=spec.hooks, local_only=True))
    assert f"add element ip {T} p_tcp_8081 {{ 1 : 172.18.0.7 }}" in update
    assert "delete table" not in update
    # Bound elsewhere (or unbound): the whole table again.
    moved = dict(bound)
    moved[("tcp", 8081)] = PortTarget(80, ("172.18.0.5",))
    update, _ = render_update(T, state, LbSpec(ports=moved, hooks=spec.hooks, local_only=True))
    assert update.startswith(f"table ip {T} {{}}\ndelete table ip {T}\n")
    # Only host tables bind.
    with pytest.raises(ValueError, match="host tables only"):
        render_full(T, LbSpec(ports={("tcp", 8081): PortTarget(80, (), "127.0.0.1")}))
