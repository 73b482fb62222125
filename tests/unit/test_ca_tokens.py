"""Join tokens: the format (security/tokens.py) and the checks a manager makes before it issues
a certificate (manager/ca/server.py), each refusal with its own status and message."""

from __future__ import annotations

import re

import grpc
import pytest

from manager.ca import server as ca_server
from manager.errors import OvnetError
from proto import ca_pb2
from security import tokens

DIGEST = bytes(range(32))
OTHER = bytes(range(1, 33))


def fixed(n: int) -> bytes:
    return b"\x07" * n


def test_token_format() -> None:
    tok = tokens.new_token(DIGEST, fixed)
    text = str(tok)
    prefix, version, dig, secret = text.split("-")
    assert (prefix, version) == ("OVNTKN", "1")
    assert len(dig) == 52 and len(secret) == 32
    assert text == text.lower().replace("ovntkn", "OVNTKN")
    assert tokens.parse(text) == tok
    assert tokens.parse(f"  {text}\n") == tok  # pasted with whitespace


def test_tokens_differ_by_secret() -> None:
    a, b = tokens.new_token(DIGEST), tokens.new_token(DIGEST)
    assert a.secret != b.secret
    assert tokens.same_secret(a, a)
    assert not tokens.same_secret(a, b)
    assert not tokens.same_secret(a, tokens.JoinToken(OTHER, a.secret))


def parts(text: str) -> list[str]:
    return text.split("-")


MANGLES = {
    "not a join token": lambda t: "hello",
    "version '2' is not supported": lambda t: t.replace("OVNTKN-1-", "OVNTKN-2-"),
    "CA digest is malformed": lambda t: "-".join([*parts(t)[:2], parts(t)[2][:-1], parts(t)[3]]),
    "secret is malformed": lambda t: t[:-1],
    "secret is malformed (": lambda t: t[:-1] + "1",  # 1 is not in the base32 alphabet
}


@pytest.mark.parametrize("message", sorted(MANGLES))
def test_malformed_tokens_say_which_part(message: str) -> None:
    text = MANGLES[message](str(tokens.new_token(DIGEST)))
    with pytest.raises(tokens.TokenError, match=re.escape(message)):
        tokens.parse(text)


def current() -> ca_pb2.JoinTokens:
    return ca_pb2.JoinTokens(
        worker=str(tokens.new_token(DIGEST)), manager=str(tokens.new_token(DIGEST))
    )


def refusal(text: str, toks: ca_pb2.JoinTokens) -> OvnetError:
    with pytest.raises(OvnetError) as info:
        ca_server.check_join_token(text, DIGEST, toks)
    return info.value


def test_each_role_token_grants_its_role() -> None:
    toks = current()
    assert ca_server.check_join_token(toks.worker, DIGEST, toks) == "worker"
    assert ca_server.check_join_token(toks.manager, DIGEST, toks) == "manager"


def test_malformed_token_is_invalid_argument() -> None:
    e = refusal("OVNTKN-1-abc", current())
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.message.startswith("not a join token: expected OVNTKN-1-<ca digest>-<secret>")
    truncated = current().worker[:-3]
    e = refusal(truncated, current())
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "secret is malformed" in e.message


def test_another_clusters_token_names_both_digests() -> None:
    e = refusal(str(tokens.new_token(OTHER)), current())
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert tokens.b32(OTHER) in e.message and tokens.b32(DIGEST) in e.message
    assert "another cluster" in e.message


def test_wrong_secret_is_unauthenticated() -> None:
    e = refusal(str(tokens.new_token(DIGEST)), current())
    assert e.code == grpc.StatusCode.UNAUTHENTICATED
    assert e.message == "the join token is not valid for this cluster (rotated, or mistyped)"


def test_rotation_retires_only_that_roles_token() -> None:
    toks = current()
    new = ca_server.rotated(toks, "worker", DIGEST)
    assert new.manager == toks.manager and new.worker != toks.worker
    assert tokens.parse(new.worker).ca_digest == DIGEST
    assert refusal(toks.worker, new).code == grpc.StatusCode.UNAUTHENTICATED
    assert ca_server.check_join_token(new.worker, DIGEST, new) == "worker"
    assert toks.worker != new.worker  # the input is not modified


def test_no_token_for_other_roles() -> None:
    with pytest.raises(OvnetError, match="no join token for role 'admin'"):
        ca_server.rotated(current(), "admin", DIGEST)


def test_a_missing_stored_token_grants_nothing() -> None:
    toks = current()
    toks.manager = ""
    assert refusal(str(tokens.new_token(DIGEST)), toks).code == grpc.StatusCode.UNAUTHENTICATED
