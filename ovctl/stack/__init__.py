"""Stacks: an application's networks and services described in compose files.

`load` reads, interpolates and merges the files (knowing the file and line of every value),
`convert` turns the result into ovnet specs (refusing what it cannot honour, naming where),
and `commands` is `ovctl stack deploy|ls|ps|services|rm`.
"""
