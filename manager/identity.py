"""This manager's own certificate: finding or getting it, serving it, renewing it.

A manager proves who it is with a certificate like any node's (role ``manager``, the
``ovnet-manager`` SAN), kept in <state dir>/tls. It is the one saved there if it is still good
for the cluster's root; else one obtained by joining through another manager with a manager
join token; else one this manager's CA issues itself (every manager holds the CA's key).
Both listeners serve it through dynamic credentials (`ServingCerts`), so renewing it
(`renew_forever`) needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc

from manager.ca.server import CAError, CertificateAuthority, credentials_problem
from osutil.backoff import Backoff
from security import pki
from security.credentials import NodeCredentials
from security.join import JoinError, ManagerUnreachable, join

log = logging.getLogger(__name__)


class ServingCerts:
    """This manager's credentials as both listeners serve them and as it presents them to other
    managers. `update` swaps them: gRPC asks each listener's fetch callback at every handshake,
    and the callback hands over the new configuration once."""

    def __init__(self, creds: NodeCredentials) -> None:
        self.creds = creds
        self.generation = 0

    def update(self, creds: NodeCredentials) -> None:
        self.creds = creds
        self.generation += 1

    def _config(self, join: bool) -> Any:
        c = self.creds
        if join:
            # The root goes with the chain: a joining node reads it and checks its digest
            # against the token before it trusts anything.
            return grpc.ssl_server_certificate_configuration([(c.key_pem, c.cert_pem + c.root_pem)])
        return grpc.ssl_server_certificate_configuration(
            [(c.key_pem, c.cert_pem)], root_certificates=c.root_pem
        )

    def server_credentials(self, join: bool) -> grpc.ServerCredentials:
        served = [self.generation]

        def fetch() -> Any:
            if served[0] == self.generation:
                return None
            served[0] = self.generation
            return self._config(join)

        return grpc.dynamic_ssl_server_credentials(
            self._config(join), fetch, require_client_authentication=not join
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        c = self.creds
        return grpc.ssl_channel_credentials(c.root_pem, c.key_pem, c.cert_pem)


async def own_credentials(
    tls_dir: Path,
    ca: CertificateAuthority,
    manager_id: str,
    *,
    join_token: str = "",
    join_addr: str = "",
    prefix: str = "",
) -> NodeCredentials:
    """This manager's certificate: the one in `tls_dir` if it is still good here; else one
    obtained by joining (with a join token), else one issued by its own CA."""
    try:
        creds = NodeCredentials.load(tls_dir)
        problem = "" if creds is None else credentials_problem(creds, ca.root, pki.utcnow())
        if creds is not None and not problem and creds.info.role != pki.ROLE_MANAGER:
            problem = f"it is a {creds.info.role} certificate"
    except pki.CertError as e:
        creds, problem = None, str(e)
    if creds is not None and not problem:
        return creds
    if problem:
        log.warning(
            "the certificate in %s cannot be used (%s): issuing a new one", tls_dir, problem
        )
    elif join_token:
        creds = await join_as_manager(join_addr, join_token, ca, prefix)
        creds.save(tls_dir)
        return creds
    creds = ca.self_issue(manager_id)
    creds.save(tls_dir)
    return creds


async def join_as_manager(
    addr: str, token: str, ca: CertificateAuthority, prefix: str
) -> NodeCredentials:
    """Join through the join listener at `addr`, retrying while nobody answers; CAError when
    that cannot work (no address, a refusal, a worker token, another cluster's CA)."""
    if not addr:
        raise CAError("--join-token needs --join ADDR: an existing manager's join listener")
    backoff = Backoff(initial=0.5, maximum=5.0)
    while True:
        try:
            nc = await join(addr, token)
            break
        except JoinError as e:
            raise CAError(f"joining the cluster through {addr} failed: {e}") from None
        except ManagerUnreachable as e:
            delay = backoff.next()
            log.warning("%s; retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
    if nc.role != pki.ROLE_MANAGER:
        raise CAError(
            f"the join token gave a {nc.role} certificate: a manager joins with the manager "
            "token (`ovctl cluster join-token manager`)"
        )
    if pki.digest(pki.load_cert(nc.root_pem)) != ca.digest:
        raise CAError(
            f"the manager at {addr} belongs to another cluster than the one in etcd under "
            f"{prefix} (their root CAs differ)"
        )
    log.info("joined the cluster as manager node %s", nc.node_id)
    return nc


async def renew_forever(ca: CertificateAuthority, certs: ServingCerts, tls_dir: Path) -> None:
    """Re-issue this manager's certificate at a random 50-80 % of its life and serve the new
    one from the next handshake on (connections already open keep going)."""
    while True:
        ci = certs.creds.info
        wait = (pki.renew_at(ci) - pki.utcnow()).total_seconds()
        await asyncio.sleep(max(0.0, wait))
        try:
            creds = ca.self_issue(ci.node_id)
            await asyncio.to_thread(creds.save, tls_dir)
        except Exception:
            log.exception("renewing this manager's certificate failed; retrying")
            await asyncio.sleep(5)
            continue
        certs.update(creds)
        new = creds.info
        log.info(
            "renewed this manager's certificate: serial %x, valid until %s",
            new.serial,
            new.not_after.isoformat(),
        )
