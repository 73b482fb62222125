"""What a certificate says (who, which role, which cluster, valid when), read without
`cryptography`; the roles and names every program checks; the time rules.

Why a reader of our own: the agent needs a certificate's identity and dates all the time (its
node ID, when to renew, why a handshake may fail) but signs and verifies only when it joins or
renews. `cryptography` maps its Rust extension (8+ MB resident, measured with
bench/footprint.py) on import, a sixth of an idle agent, so the agent reads these few fields
itself and leaves everything else (keys, CSRs, signatures: security/pki.py) to a moment that
needs it. The reader takes only what the managers issue (security/pki.py `issue`): a DER X.509
certificate whose subject has CN, OU and O as strings; anything else is a CertError, and the
unit tests compare it with `cryptography` on the certificates pki makes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import random
import re
from dataclasses import dataclass

ROLE_MANAGER = "manager"
ROLE_WORKER = "worker"
ROLE_ADMIN = "admin"
ROLES = (ROLE_MANAGER, ROLE_WORKER, ROLE_ADMIN)
MANAGER_SAN = "ovnet-manager"

_CN, _OU, _O = bytes([0x55, 4, 3]), bytes([0x55, 4, 11]), bytes([0x55, 4, 10])
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)
_STRING_TAGS = {0x0C, 0x13, 0x16, 0x14, 0x1E}  # UTF8, Printable, IA5, Teletex, BMP


class CertError(ValueError):
    """A certificate, key or CSR that cannot be used; the message says why."""


@dataclass(frozen=True)
class CertInfo:
    node_id: str
    role: str
    cluster_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read(pem: bytes) -> CertInfo:
    """The identity and validity of the first certificate in `pem` (CertError if there is
    none, or it is not one the managers issue)."""
    m = _PEM.search(pem)
    if m is None:
        raise CertError("not a PEM certificate")
    try:
        der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
        return _tbs_info(der)
    except (binascii.Error, IndexError, ValueError) as e:
        raise CertError(f"not a usable certificate: {e}") from None


def _tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `pos`."""
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad DER length")
        n = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    if pos + n > len(buf):
        raise ValueError("truncated DER")
    return tag, pos, pos + n


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, s, e = _tlv(buf, start)
        out.append((tag, s, e))
        start = e
    return out


def _tbs_info(der: bytes) -> CertInfo:
    tag, s, e = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("a certificate is a SEQUENCE")
    tag, s, e = _tlv(der, s)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("tbsCertificate is a SEQUENCE")
    fields = _children(der, s, e)
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    serial, _alg, _issuer, validity, subject = fields[:5]
    if serial[0] != 0x02 or validity[0] != 0x30 or subject[0] != 0x30:
        raise ValueError("unexpected tbsCertificate layout")
    times = _children(der, validity[1], validity[2])
    names = _subject(der, subject[1], subject[2])
    return CertInfo(
        node_id=names.get(_CN, ""),
        role=names.get(_OU, ""),
        cluster_id=names.get(_O, ""),
        not_before=_time(der, *times[0]),
        not_after=_time(der, *times[1]),
        serial=int.from_bytes(der[serial[1] : serial[2]], "big", signed=True),
    )


def _subject(der: bytes, start: int, end: int) -> dict[bytes, str]:
    """OID -> the first string value given for it in a Name."""
    out: dict[bytes, str] = {}
    for tag, s, e in _children(der, start, end):  # RelativeDistinguishedName (SET)
        if tag != 0x31:
            raise ValueError("a Name holds SETs")
        for atag, a_s, a_e in _children(der, s, e):  # AttributeTypeAndValue
            (otag, os_, oe), (vtag, vs, ve) = _children(der, a_s, a_e)[:2]
            if atag != 0x30 or otag != 0x06:
                raise ValueError("bad attribute in a Name")
            if vtag not in _STRING_TAGS:
                raise ValueError("a Name attribute that is not a string")
            codec = "utf-16-be" if vtag == 0x1E else "utf-8"
            out.setdefault(der[os_:oe], der[vs:ve].decode(codec))
    return out


def _time(der: bytes, tag: int, start: int, end: int) -> dt.datetime:
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ (RFC 5280: 50-99 are 19xx)
        when = dt.datetime.strptime(text, "%y%m%d%H%M%SZ")
        if when.year >= 2050:
            when = when.replace(year=when.year - 100)
    elif tag == 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        when = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError("a validity time is UTCTime or GeneralizedTime")
    return when.replace(tzinfo=dt.UTC)


def check_claims(ci: CertInfo, cluster_id: str, now: dt.datetime) -> None:
    """What pki.check asks of a certificate besides its signature: that it is for this
    cluster, names a known role and is valid at `now` (CertError saying what is wrong)."""
    if ci.cluster_id != cluster_id:
        raise CertError(f"the certificate is for cluster {ci.cluster_id!r}, not this one")
    if ci.role not in ROLES:
        raise CertError(f"the certificate names an unknown role {ci.role!r}")
    check_validity(ci, now)


def check_validity(ci: CertInfo, now: dt.datetime) -> None:
    """The time part of pki.check: the only part that changes for a certificate already
    checked against the root, so a caller may cache the rest."""
    if now < ci.not_before:
        raise CertError(f"the certificate is not valid before {ci.not_before.isoformat()}")
    if now >= ci.not_after:
        raise CertError(f"the certificate expired at {ci.not_after.isoformat()}")


def renew_at(ci: CertInfo, rng: random.Random | None = None) -> dt.datetime:
    """When to renew: at a random 50-80 % of the certificate's life (as swarmkit does), so that
    a cluster whose nodes joined together does not renew all at once."""
    life = ci.not_after - ci.not_before
    frac = (rng or random.SystemRandom()).uniform(0.5, 0.8)
    return ci.not_before + life * frac
