"""Turn the text a person types into API messages, with no I/O.

Everything here raises `SpecError` with a message that names the bad input and says what would
be accepted, so the CLI can print it unchanged as a usage error.

Two modules: `values` (one value at a time: durations, ports, CIDRs, publish and attachment
specs, constraints, filters) and `objects` (whole specs, and the changes `update` commands make
to the spec the manager returned). Callers use them through this package (``specs.X``): which
half a name lives in is no business of the CLI's.
"""

from ovctl.specs.objects import (
    HealthOptions,
    ServiceChanges,
    ServiceOptions,
    apply_health,
    apply_node_changes,
    apply_service_changes,
    network_spec,
    service_spec,
)
from ovctl.specs.values import (
    ENDPOINT_MODES,
    NODE_AVAILABILITIES,
    NODE_ROLES,
    RESTART_CONDITIONS,
    SpecConflict,
    SpecError,
    parse_bool,
    parse_cidr,
    parse_constraint,
    parse_duration,
    parse_env,
    parse_filters,
    parse_ip,
    parse_key_value,
    parse_network_attachment,
    parse_port,
    parse_port_ref,
    parse_publish,
    parse_scale,
    parse_tail,
    parse_task_state,
    parse_uint,
)

__all__ = [
    "ENDPOINT_MODES",
    "NODE_AVAILABILITIES",
    "NODE_ROLES",
    "RESTART_CONDITIONS",
    "HealthOptions",
    "ServiceChanges",
    "ServiceOptions",
    "SpecConflict",
    "SpecError",
    "apply_health",
    "apply_node_changes",
    "apply_service_changes",
    "network_spec",
    "parse_bool",
    "parse_cidr",
    "parse_constraint",
    "parse_duration",
    "parse_env",
    "parse_filters",
    "parse_ip",
    "parse_key_value",
    "parse_network_attachment",
    "parse_port",
    "parse_port_ref",
    "parse_publish",
    "parse_scale",
    "parse_tail",
    "parse_task_state",
    "parse_uint",
    "service_spec",
]
