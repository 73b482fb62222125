"""The agent's data plane: a pure planner (`plan`) over observed kernel state and a thin
netlink applier (`kernel.DataPlane`).

Modules: observed (what the kernel holds, as records), ops (the changes), desired (what the
desired state means for one host), plan (the planner's steps), simulate (an in-memory kernel for
tests), observe (netlink dumps -> records), kernel (the applier), nl (raw rtnetlink).
"""

from agent.dataplane.desired import problems
from agent.dataplane.observed import Observed
from agent.dataplane.ops import Op
from agent.dataplane.plan import plan
from agent.dataplane.simulate import simulate

__all__ = ["Observed", "Op", "plan", "problems", "simulate"]
