"""The cluster's certificate authority, server side: the root CA and join tokens in etcd, the
NodeCA service (`server`), and who may call which RPC (`authz`).

The formats (certificates, join tokens) and the joining side are security/, shared with the
agent and ovctl.
"""
