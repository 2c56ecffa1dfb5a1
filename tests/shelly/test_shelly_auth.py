"""Digest and Basic auth computations against published test vectors."""

from __future__ import annotations

import hashlib

import pytest
from shelly_payloads import JSON_CHALLENGE_MESSAGE

from chargectl.common.errors import InvalidResponse
from chargectl.shelly.auth import (
    JSON_HA2,
    Challenge,
    DigestState,
    basic_header,
    ha1,
    parse_auth_header,
    parse_json_challenge,
)

REALM = "shellyplusplugs-aabbccddeeff"


def test_ha1_vector() -> None:
    assert ha1(REALM, "secret") == "ae050f83e37149c1f76ec619310aba025fd0e756bb2a715f56b3bbaa5925f360"


def test_json_form_fixed_ha2_and_decimal_nc() -> None:
    assert hashlib.sha256(b"dummy_method:dummy_uri").hexdigest() == JSON_HA2
    state = DigestState("secret")
    state.adopt(Challenge(realm=REALM, nonce="1700000000"))
    auth = state.json_auth(cnonce="12345")
    assert auth["response"] == "b16024fc7378b60633a73d206eaf8f45d6f526e01ddc7a494ccb629f2edfcaec"
    assert auth["nc"] == 1
    assert auth["nonce"] == 1700000000  # decimal nonces go back as the number they came as
    assert (auth["username"], auth["realm"], auth["algorithm"]) == ("admin", REALM, "SHA-256")


def test_header_form_method_uri_ha2_and_hex_nc() -> None:
    state = DigestState("secret")
    state.adopt(Challenge(realm=REALM, nonce="1700000000"))
    scheme, params = parse_auth_header(state.header("GET", "/rpc/Switch.GetStatus?id=0", cnonce="0a4f113b"))
    assert scheme == "digest"
    assert params["response"] == "83ed56df05fd7aeb05f942189af5b12e57d8edbb44d4c38f3ac110c920f54ee4"
    assert params["nc"] == "00000001"
    assert params["uri"] == "/rpc/Switch.GetStatus?id=0"
    assert params["username"] == "admin"
    assert "opaque" not in params


def test_nonce_count_increments_and_restarts_at_one_per_nonce() -> None:
    state = DigestState("secret")
    state.adopt(Challenge(realm=REALM, nonce="abc"))
    ncs = [parse_auth_header(state.header("GET", "/rpc/Sys.GetStatus"))[1]["nc"] for _ in range(11)]
    assert ncs[:3] == ["00000001", "00000002", "00000003"]
    assert ncs[10] == "0000000b"
    state.adopt(Challenge(realm=REALM, nonce="def", stale=True))
    assert parse_auth_header(state.header("GET", "/x"))[1]["nc"] == "00000001"
    assert state.json_auth()["nc"] == 2  # the JSON form shares the count, as a plain integer


def test_base64_nonce_with_padding_is_echoed_exactly() -> None:  # don't split on every '='
    header = 'Digest qop="auth", realm="shellyplugsg3-d885ac16f888", nonce="vohqagAAAAB+XQ/a==", algorithm=SHA-256, stale=true'
    ch = Challenge.from_header(header)
    assert ch.nonce == "vohqagAAAAB+XQ/a=="
    assert ch.stale is True
    state = DigestState("pw")
    state.adopt(ch)
    assert parse_auth_header(state.header("GET", "/rpc/Shelly.GetStatus"))[1]["nonce"] == "vohqagAAAAB+XQ/a=="
    assert state.json_auth()["nonce"] == "vohqagAAAAB+XQ/a=="


def test_empty_opaque_is_echoed() -> None:  # httpx drops it, some devices need it
    ch = Challenge.from_header('Digest qop="auth", realm="R", nonce="0b00ddda", algorithm=SHA-256, opaque=""')
    assert ch.opaque == ""
    state = DigestState("pw")
    state.adopt(ch)
    assert 'opaque=""' in state.header("GET", "/rpc/Shelly.GetStatus")


def test_stale_absent_means_not_stale() -> None:
    assert Challenge.from_header('Digest realm="R", nonce="1", qop="auth"').stale is False


@pytest.mark.parametrize(
    "header",
    [
        'Basic realm="x"',
        'Digest realm="R", nonce="1", algorithm=MD5',
        'Digest realm="R"',
        'Digest realm="R, nonce="1"',
    ],
)
def test_unusable_challenges_are_invalid_response(header: str) -> None:
    with pytest.raises(InvalidResponse):
        Challenge.from_header(header)


def test_json_challenge_message_is_parsed_twice() -> None:
    ch = parse_json_challenge(JSON_CHALLENGE_MESSAGE)
    assert (ch.realm, ch.nonce, ch.algorithm) == ("shellyplus2pm-c4d8d5563e48", "1725185413", "SHA-256")
    with pytest.raises(InvalidResponse):
        parse_json_challenge("not json")
    # A hostile plug's message nested past the parser's recursion limit: that plug's problem, named as
    # such, not a RecursionError that restarts the agent's plug task.
    with pytest.raises(InvalidResponse, match="not JSON"):
        parse_json_challenge("[" * 5000 + "]" * 5000)


def test_forget_drops_the_nonce() -> None:
    state = DigestState("pw")
    state.adopt(Challenge(realm=REALM, nonce="n"))
    state.forget()
    assert state.challenge is None
    with pytest.raises(RuntimeError):
        state.header("GET", "/")


def test_basic_header_for_gen1() -> None:
    assert basic_header("admin", "secret") == "Basic YWRtaW46c2VjcmV0"
