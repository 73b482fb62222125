"""Which of a reconcile's ops repair drift, and of what kind: the agent's
`ovnet_dataplane_drift_repairs_total{kind}` (agent/metrics.py).

Drift, here, is the kernel no longer holding what the agent had made: something that existed
but went missing or differs (an FDB entry or a veth deleted by hand, a link's MTU or master
changed, the masquerade table flushed, a sandbox's resolv.conf rewritten). Each reconcile
plans `plan(desired, observed)`; the ops that fix drift are those the same observation would
also need to get back to the *settled* desired state, the one the last fully successful
reconcile applied (after it, the kernel held exactly that). So an op counts when it is planned
against both states and applied without error. Not counted:

- ops that only follow a change of the desired state (a task placed, a remote endpoint learnt,
  a network removed): they are not planned against the settled state;
- retries: after a reconcile with any failure nothing is settled, so the next one counts none;
- the agent's first reconcile (nothing is settled yet): what it builds then is creation, or
  the adoption of what an earlier agent left.

The extra planning runs only on a reconcile that has ops to apply: an idle agent pays nothing.
IPsec states and policies (agent/dataplane/xfrm.py) are not planned here and not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from agent.dataplane import ops

# An op's kind: the bounded label values of the metric.
KIND: dict[type[ops.Op], str] = {
    ops.CreateNetns: "netns",
    ops.DeleteNetns: "netns",
    ops.DeleteLink: "link",
    ops.CreateBridge: "link",
    ops.CreateVxlan: "link",
    ops.CreateVeth: "link",
    ops.SetLink: "link",
    ops.SetLoUp: "link",
    ops.SetAddresses: "address",
    ops.SetDefaultRoute: "route",
    ops.AddFdb: "fdb",
    ops.DelFdb: "fdb",
    ops.AddNeigh: "neigh",
    ops.DelNeigh: "neigh",
    ops.WriteSandboxFiles: "files",
    ops.RemoveSandboxFiles: "files",
    ops.EnsureNft: "nft",
    ops.DeleteNft: "nft",
    ops.SetIpForward: "sysctl",
    ops.SetRouteLocalnet: "sysctl",
}
KINDS: tuple[str, ...] = tuple(sorted(set(KIND.values())))


def repairs(
    todo: Sequence[ops.Op], settled: Iterable[ops.Op], failed: Iterable[ops.Op]
) -> Counter[str]:
    """Kind -> how many of `todo` (this reconcile's ops) repaired drift: planned against the
    settled state too (`settled`: that plan), and not among `failed`."""
    again = set(settled).difference(failed)
    return Counter(KIND.get(type(op), "other") for op in todo if op in again)
