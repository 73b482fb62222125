"""Turn the text a person types into API messages, with no I/O.

Everything here raises `SpecError` with a message that names the bad input and says what would
be accepted, so the CLI can print it unchanged as a usage error.

Two modules: `values` (one value at a time: durations, ports, CIDRs, publish and attachment
specs, constraints, filters) and `objects` (whole specs, and the changes `update` commands make
to the spec the manager returned). Callers use them through this package (``specs.X``): which
half a name lives in is no business of the CLI's.
"""

# The facade: each module names its public part in __all__; this package re-exports both.
from ovctl.specs.objects import *  # noqa: F403
from ovctl.specs.values import *  # noqa: F403
