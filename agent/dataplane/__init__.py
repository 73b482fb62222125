"""The agent's data plane: a pure planner (`plan`) over observed kernel state and a thin
netlink applier (`kernel.DataPlane`)."""

from agent.dataplane.plan import Observed, Op, plan, problems, simulate

__all__ = ["Observed", "Op", "plan", "problems", "simulate"]
