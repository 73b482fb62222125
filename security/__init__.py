"""security: who a node is and how it proves it, shared by the manager, the agent and ovctl.

Owns: the cluster's certificate formats and checks (`pki`: root CA, node and admin
certificates, roles in the OU, the ``ovnet-manager`` server name), join tokens (`tokens`), a
node's credentials on disk and on a channel, with the diagnosis of a refused handshake
(`credentials`), and joining the cluster and renewing a certificate from the node's side
(`join`).

The server side (the CA in etcd, the NodeCA RPCs, who may call what) stays in manager/ca: only
a manager issues certificates, but every program must read, present and check them the same
way, which is why these formats live here and not in any one program.
Layering: security imports proto and osutil only (tests/unit/test_layers.py enforces this).
"""
