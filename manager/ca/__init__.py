"""The cluster's certificate authority: root CA, node certificates, join tokens, authorization.

`pki` and `tokens` are pure (no I/O) and shared with the agent and ovctl, which need the same
formats on the joining side.
"""
