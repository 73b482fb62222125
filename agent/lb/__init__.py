"""VIP load balancing and the ingress routing mesh with nftables (numgen + DNAT).

plan: the pure core (specs -> nft scripts + state); nft: an in-process libnftables binding
that acts inside a given netns; balancer: the applier that keeps one table per namespace.
"""

from agent.lb.balancer import LbError, LoadBalancer
from agent.lb.nft import NetnsGone, Nft, NftError
from agent.lb.plan import LbSpec, LbState, PortTarget, render_delete, render_full, render_update

__all__ = [
    "LbError",
    "LbSpec",
    "LbState",
    "LoadBalancer",
    "NetnsGone",
    "Nft",
    "NftError",
    "PortTarget",
    "render_delete",
    "render_full",
    "render_update",
]
