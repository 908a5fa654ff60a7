"""Tests for sipstack.auth: digest vectors, header grammar, nonces, replay, verifier."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipstack import auth as auth_mod
from sipstack.auth import (
    AuthStatus,
    Credentials,
    DigestChallenge,
    DigestVerifier,
    NonceCountStatus,
    NonceCountTracker,
    NonceManager,
    NonceStatus,
    answer_challenge,
    compute_ha1,
    compute_response,
    format_challenge,
    format_credentials,
    parse_challenge,
    parse_credentials,
)
from sipstack.errors import SipParseError

SECRET = b"0123456789abcdef-test-secret"
REALM = "pool.example.com"
T0 = 1_700_000_000.0


# --- known-answer vectors -------------------------------------------------------------------


def test_rfc2617_md5_vector() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    resp = compute_response(
        ha1, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "00000001", "0a4f113b", "auth", "MD5",
    )  # fmt: skip
    assert resp == "6629fae49393a05397450978507c4ef1"
    # nc as int and algorithm absent (defaults to MD5) give the same answer
    assert resp == compute_response(
        ha1, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        1, "0a4f113b", "auth", None,
    )  # fmt: skip


def test_rfc7616_sha256_vector() -> None:
    ha1 = compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", "SHA-256")
    resp = compute_response(
        ha1, "GET", "/dir/index.html", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "SHA-256",
    )  # fmt: skip
    assert resp == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc7616_md5_vector_via_parsed_headers() -> None:
    # RFC 7616 §3.9.1, MD5 variant, going through the header parser.
    ch = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5,\r\n'
        ' nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",\r\n'
        ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert ch.qop == ("auth", "auth-int")
    creds = answer_challenge(
        ch, username="Mufasa", password="Circle of Life", method="GET",
        uri="/dir/index.html", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )  # fmt: skip
    assert creds.response == "8ca523f5e9506fed4657c9700eebdbec"
    assert creds.opaque == ch.opaque


def test_unsupported_algorithm_and_qop_raise_value_error() -> None:
    with pytest.raises(ValueError):
        compute_ha1("a", "b", "c", "SHA-1")
    with pytest.raises(ValueError):
        compute_response("00", "GET", "/", "n", 1, "c", "bogus", "MD5")


# --- header grammar -------------------------------------------------------------------------


def test_parse_credentials_lws_quoting_and_case() -> None:
    c = parse_credentials(
        'Digest  USERNAME = "bob" ,realm=  "a \\"quoted\\" realm"\t,  Nonce="n1",'
        ' uri="sip:pool.example.com", response="abc", algorithm=sha-256, qop=auth,'
        ' nc=00000001, cnonce="x", userhash=false'
    )
    assert c.scheme == "Digest"
    assert c.username == "bob"
    assert c.realm == 'a "quoted" realm'
    assert c.nonce == "n1"
    assert c.algorithm == "sha-256"
    assert (c.qop, c.nc, c.cnonce) == ("auth", "00000001", "x")
    assert c.params == (("userhash", "false"),)


def test_parse_challenge_fields() -> None:
    ch = parse_challenge('Digest realm="r", nonce="n", stale=TRUE, algorithm=SHA-256, qop="auth"')
    assert ch == DigestChallenge(realm="r", nonce="n", algorithm="SHA-256", qop=("auth",),
                                 stale=True)  # fmt: skip
    assert parse_challenge('Digest realm="r", stale=false').stale is False


def test_unknown_scheme_parses() -> None:
    c = parse_credentials("NoOneKnowsThisScheme opaque-data=here")
    assert c.scheme == "NoOneKnowsThisScheme"
    assert c.params == (("opaque-data", "here"),)
    assert parse_challenge("NoOneKnowsThisScheme opaque-data=here").scheme == (
        "NoOneKnowsThisScheme"
    )
    b = parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    assert (b.scheme, b.token68) == ("Basic", "QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    assert parse_credentials(b.to_header()) == b
    # a verifier answers an unknown scheme with FAILED (then the caller challenges)
    v = DigestVerifier(NonceManager(SECRET), REALM)
    r = v.verify(c, "REGISTER", lambda u, a: None, T0)
    assert r.status is AuthStatus.FAILED


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        '"Digest"',
        "Digest,realm=x",
        "Digest realm",
        "Digest realm=",
        'Digest realm="unterminated',
        'Digest realm="a", realm="b"',
        'Digest realm="a",',
        'Digest realm="a",,nonce="b"',
        'Digest realm="a" nonce="b"',
        "Digest QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digest realm="a\r\nb"',
        'Digest realm="a"\nnonce="b"',
        'Digest realm="\x01"',
        'Digest realm="a\\\r"',
    ],
)
def test_malformed_raises_sip_parse_error(value: str) -> None:
    with pytest.raises(SipParseError) as e1:
        parse_credentials(value)
    assert e1.value.status == 400
    with pytest.raises(SipParseError):
        parse_challenge(value)


def test_folded_header_is_accepted() -> None:
    c = parse_credentials('Digest username="a",\r\n\trealm="b"')
    assert (c.username, c.realm) == ("a", "b")


def test_scheme_only() -> None:
    assert parse_credentials("Digest") == Credentials()
    assert parse_challenge(" Digest ") == DigestChallenge()


@pytest.mark.parametrize(
    ("value", "scheme", "realm"),
    [
        ("Digest realm=x", "Digest", "x"),
        ("Digest\trealm=x", "Digest", "x"),
        ("Digest \t realm=x", "Digest", "x"),
        ('Digest\trealm="a b"', "Digest", "a b"),
        ("digest realm=x", "digest", "x"),
        ("X-Scheme.1 realm=x", "X-Scheme.1", "x"),
    ],
)
def test_scheme_then_parameters(value: str, scheme: str, realm: str) -> None:
    """The scheme is the token before the first LWS, however that LWS is written."""
    c = parse_credentials(value)
    assert (c.scheme, c.realm) == (scheme, realm)


@pytest.mark.parametrize("value", ["Dig,est realm=x", '"Digest" realm=x', "=x", "Digest=x y"])
def test_scheme_not_a_token(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_credentials(value)


@settings(max_examples=400)
@given(st.text())
def test_fuzz_parsers_only_raise_sip_parse_error(value: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        with contextlib.suppress(SipParseError):
            parse(value)


_auth_alphabet = st.sampled_from(list('Digest realm=nonce,"\\ \t\r\nqop=auth abc-=/+'))


@settings(max_examples=400)
@given(st.text(alphabet=_auth_alphabet))
def test_fuzz_parsers_grammar_alphabet(value: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        with contextlib.suppress(SipParseError):
            parse(value)


def _outcome(parse: Any, text: str) -> object:
    try:
        return parse(text)
    except SipParseError as e:
        return ("error", str(e))


_param_alphabet = st.sampled_from(list('aB1=,"\\ \t\x7f\x80é-'))


@settings(max_examples=600)
@given(st.text(alphabet=_param_alphabet) | st.lists(
    st.tuples(st.sampled_from(["a", "Qop", "nc", "a", "é", "a-b", "a b", ""]),
              st.sampled_from(["=", " = ", "=\t", ""]),
              st.sampled_from(["x", '""', '"a b"', '"q\\"x"', '"é"', "x y", '"', "", "x ",
                               "SHA-256", "x=y", '"a\tb"', '"\x7f"', 'x"']),
              st.sampled_from([",", " , ", ",\t", "", ", ,"])),
    max_size=4).map(lambda ps: "".join("".join(p) for p in ps).strip(" \t")))
def test_fast_parameter_parser_agrees_with_the_reference(text: str) -> None:
    """The fast path (``str.find`` and slices) returns what the element-by-element reference
    returns, and raises its errors."""
    assert _outcome(auth_mod._parse_params, text) == _outcome(auth_mod._parse_params_slow, text)


_value = st.text().filter(lambda s: "\r" not in s and "\n" not in s)
_opt = st.none() | _value
_token = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]+", fullmatch=True)
_extra_name = st.from_regex(r"[a-z0-9\-.!%*_+`'~]+", fullmatch=True)


@st.composite
def _extras(draw: st.DrawFn, reserved: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    names = draw(st.lists(_extra_name.filter(lambda n: n not in reserved), unique=True,
                          max_size=3))  # fmt: skip
    return tuple((n, draw(_value)) for n in names)


_CH_NAMES = ("realm", "domain", "nonce", "opaque", "stale", "algorithm", "qop")
_CR_NAMES = ("username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "opaque",
             "qop", "nc")  # fmt: skip


@given(
    realm=_opt, nonce=_opt, algorithm=_opt, opaque=_opt, domain=_opt, stale=st.booleans(),
    qop=st.none() | st.lists(_token, max_size=3).map(tuple), scheme=_token,
    params=_extras(_CH_NAMES),
)  # fmt: skip
def test_challenge_round_trip(
    realm: str | None, nonce: str | None, algorithm: str | None, opaque: str | None,
    domain: str | None, stale: bool, qop: tuple[str, ...] | None, scheme: str,
    params: tuple[tuple[str, str], ...],
) -> None:  # fmt: skip
    ch = DigestChallenge(realm=realm, nonce=nonce, algorithm=algorithm, qop=qop, opaque=opaque,
                         stale=stale, domain=domain, scheme=scheme, params=params)  # fmt: skip
    assert parse_challenge(format_challenge(ch)) == ch


@given(
    fields=st.fixed_dictionaries({n: _opt for n in _CR_NAMES}), scheme=_token,
    params=_extras(_CR_NAMES),
)  # fmt: skip
def test_credentials_round_trip(
    fields: dict[str, str | None], scheme: str, params: tuple[tuple[str, str], ...]
) -> None:
    c = Credentials(**fields, scheme=scheme, params=params)
    assert parse_credentials(format_credentials(c)) == c
    assert parse_credentials(c.to_header()) == c


def test_format_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError):
        format_credentials(Credentials(username="a\r\nb"))
    with pytest.raises(ValueError):
        format_challenge(DigestChallenge(qop=("a b",)))
    with pytest.raises(ValueError):
        format_challenge(DigestChallenge(params=(("realm", "x"),)))


# --- nonces ---------------------------------------------------------------------------------


def test_nonce_valid_stale_invalid() -> None:
    nm = NonceManager(SECRET, lifetime=300.0)
    n = nm.make(T0, REALM)
    assert nm.check(n, T0, REALM) is NonceStatus.VALID
    assert nm.check(n, T0 + 299.0, REALM) is NonceStatus.VALID
    assert nm.check(n, T0 + 301.0, REALM) is NonceStatus.STALE
    assert nm.check(n, T0 - 60.0, REALM) is NonceStatus.STALE  # far in the future
    assert nm.check(n, T0, "other.realm") is NonceStatus.INVALID
    assert nm.issued_at(n) == pytest.approx(T0)
    assert n != nm.make(T0, REALM)  # salted: distinct nonces at the same instant


def test_nonce_forged_or_garbled() -> None:
    nm = NonceManager(SECRET)
    n = nm.make(T0, REALM)
    other = NonceManager(b"another-secret-of-16+bytes").make(T0, REALM)
    assert nm.check(other, T0, REALM) is NonceStatus.INVALID
    flipped = n[:-2] + ("A" if n[-2] != "A" else "B") + n[-1]
    assert nm.check(flipped, T0, REALM) is NonceStatus.INVALID
    for bad in ("", "x", n + "A", n[:-1] + "!", n[:-1] + "+", n[:-1] + "=", "é" * 44):
        assert nm.check(bad, T0, REALM) is NonceStatus.INVALID


def _fields(realm: str, source: str) -> bytes:
    r, src = realm.encode(), source.encode()
    return struct.pack(">I", len(r)) + r + struct.pack(">I", len(src)) + src


@pytest.mark.parametrize("key_len", [16, 32, 64, 65, 200])
def test_nonce_layout_and_keyed_blake2b_mac(key_len: int) -> None:
    """The documented layout: base64url(version 2 | issue ms | salt | mac), the mac being
    BLAKE2b-128 keyed with the secret (hashed to 64 bytes when longer), personalised
    "sipstack-nonce", over version | ms | salt | len+realm | len+source; salts differ."""
    key = bytes((i * 7) % 256 for i in range(key_len))
    nm = NonceManager(key)
    mac_key = key if key_len <= 64 else hashlib.blake2b(key).digest()
    salts = set()
    for realm, source in ((REALM, ""), ("é.example", "10.0.0.1:5061"), (REALM, "")):
        raw = base64.urlsafe_b64decode(nm.make(T0, realm, source))
        head, mac = raw[:17], raw[17:]
        assert head[0] == 2 and struct.unpack(">q", head[1:9])[0] == round(T0 * 1000)
        expected = hashlib.blake2b(
            head + _fields(realm, source), key=mac_key, digest_size=16, person=b"sipstack-nonce"
        ).digest()
        assert mac == expected
        salts.add(head[9:])
    assert len(salts) == 3


def test_version_1_nonces_still_accepted() -> None:
    """Nonces of earlier releases (version 1, HMAC-SHA256) check as before: an FE upgraded
    inside a pool accepts what its clients hold."""
    head = struct.pack(">BqQ", 1, round(T0 * 1000), 12345)
    mac = hmac.new(SECRET, b"sipstack-nonce" + head + _fields(REALM, ""), hashlib.sha256)
    old = base64.urlsafe_b64encode(head + mac.digest()[:16]).decode()
    nm = NonceManager(SECRET)
    assert nm.check(old, T0 + 1, REALM) is NonceStatus.VALID
    assert nm.check(old, T0 + 301, REALM) is NonceStatus.STALE
    assert nm.check(old, T0 + 1, "other.realm") is NonceStatus.INVALID
    forged = base64.urlsafe_b64encode(head + bytes(16)).decode()
    assert nm.check(forged, T0 + 1, REALM) is NonceStatus.INVALID


def test_nonce_source_binding() -> None:
    nm = NonceManager(SECRET)
    n = nm.make(T0, REALM, source="10.0.0.1:5061")
    assert nm.check(n, T0, REALM, source="10.0.0.1:5061") is NonceStatus.VALID
    assert nm.check(n, T0, REALM, source="10.0.0.2:5061") is NonceStatus.INVALID


def test_nonce_manager_arguments() -> None:
    with pytest.raises(ValueError):
        NonceManager(b"short")
    with pytest.raises(ValueError):
        NonceManager(SECRET, lifetime=0)
    with pytest.raises(ValueError):
        NonceManager(SECRET).make(float("nan"), REALM)


# --- nonce-count tracker --------------------------------------------------------------------


def test_tracker_replay_and_bound() -> None:
    t = NonceCountTracker(max_entries=2)
    assert t.record("a", 1, 1.0) is NonceCountStatus.FRESH
    assert t.record("a", 1, 1.0) is NonceCountStatus.REPLAY
    assert t.record("a", 2, 1.0) is NonceCountStatus.FRESH
    assert t.record("b", 1, 2.0) is NonceCountStatus.FRESH
    assert t.record("c", 1, 3.0) is NonceCountStatus.FRESH  # evicts "a" (LRU)
    assert len(t) == 2
    # "a" was evicted: not accepted again as if new (would reopen replay), answered FORGOTTEN
    assert t.record("a", 1, 1.0) is NonceCountStatus.FORGOTTEN
    assert t.record("d", 1, 4.0) is NonceCountStatus.FRESH  # issued after the watermark
    with pytest.raises(ValueError):
        NonceCountTracker(0)


# --- verifier -------------------------------------------------------------------------------

USERS = {"alice": "wonderland", "bob": "builder"}


def lookup(username: str, algorithm: str) -> str | None:
    pw = USERS.get(username)
    return None if pw is None else compute_ha1(username, REALM, pw, algorithm)


def _answer(
    header: str, user: str, password: str, nc: int = 1, cnonce: str = "c0ffee"
) -> Credentials:
    return answer_challenge(
        parse_challenge(header), username=user, password=password, method="REGISTER",
        uri="sip:pool.example.com", cnonce=cnonce, nc=nc,
    )  # fmt: skip


@pytest.fixture
def verifier() -> DigestVerifier:
    return DigestVerifier(NonceManager(SECRET, lifetime=300.0), REALM)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_verify_ok_round_trip(verifier: DigestVerifier, algorithm: str) -> None:
    header = verifier.challenge(T0, algorithm=algorithm)
    ch = parse_challenge(header)
    assert (ch.realm, ch.algorithm, ch.qop, ch.stale) == (REALM, algorithm, ("auth",), False)
    creds = parse_credentials(_answer(header, "alice", "wonderland").to_header())
    r = verifier.verify(creds, "REGISTER", lookup, T0 + 1)
    assert r.ok and r.status is AuthStatus.OK and r.username == "alice"
    # next request with the same nonce and a higher nc is fine
    r2 = verifier.verify(_answer(header, "alice", "wonderland", nc=2), "REGISTER", lookup, T0 + 2)
    assert r2.status is AuthStatus.OK


def test_verify_sess_variant(verifier: DigestVerifier) -> None:
    header = verifier.challenge(T0, algorithm="SHA-256-sess")
    r = verifier.verify(_answer(header, "bob", "builder"), "REGISTER", lookup, T0)
    assert r.status is AuthStatus.OK


def test_challenges_sha256_then_md5(verifier: DigestVerifier) -> None:
    hs = verifier.challenges(T0)
    assert [parse_challenge(h).algorithm for h in hs] == ["SHA-256", "MD5"]
    stale = verifier.challenges(T0, stale=True)
    assert all(parse_challenge(h).stale for h in stale)
    md5_only = DigestVerifier(NonceManager(SECRET), REALM, algorithms=["MD5"])
    assert [parse_challenge(h).algorithm for h in md5_only.challenges(T0)] == ["MD5"]


def test_verify_stale_nonce(verifier: DigestVerifier) -> None:
    header = verifier.challenge(T0)
    creds = _answer(header, "alice", "wonderland")
    assert verifier.verify(creds, "REGISTER", lookup, T0 + 301).status is AuthStatus.STALE
    # a stale nonce with a wrong password is a failure, not stale
    wrong = _answer(header, "alice", "nope")
    assert verifier.verify(wrong, "REGISTER", lookup, T0 + 301).status is AuthStatus.FAILED
    assert parse_challenge(verifier.challenge(T0 + 301, stale=True)).stale is True


def test_verify_forged_nonce(verifier: DigestVerifier) -> None:
    forged = DigestVerifier(NonceManager(b"attacker-chosen-secret!!"), REALM).challenge(T0)
    creds = _answer(forged, "alice", "wonderland")
    r = verifier.verify(creds, "REGISTER", lookup, T0)
    assert r.status is AuthStatus.FAILED and r.reason == "invalid nonce"


def test_verify_replay_same_nc(verifier: DigestVerifier) -> None:
    header = verifier.challenge(T0)
    creds = _answer(header, "alice", "wonderland", nc=1)
    assert verifier.verify(creds, "REGISTER", lookup, T0).status is AuthStatus.OK
    r = verifier.verify(creds, "REGISTER", lookup, T0 + 1)
    assert r.status is AuthStatus.FAILED and r.reason == "replayed nonce-count"
    # a lower nc after a higher one is a replay too
    verifier.verify(_answer(header, "alice", "wonderland", nc=5), "REGISTER", lookup, T0)
    low = _answer(header, "alice", "wonderland", nc=3)
    assert verifier.verify(low, "REGISTER", lookup, T0).status is AuthStatus.FAILED


def test_failed_digest_does_not_poison_nc(verifier: DigestVerifier) -> None:
    header = verifier.challenge(T0)
    bad = _answer(header, "alice", "wrong", nc=0xFFFFFFF)
    assert verifier.verify(bad, "REGISTER", lookup, T0).status is AuthStatus.FAILED
    good = _answer(header, "alice", "wonderland", nc=1)
    assert verifier.verify(good, "REGISTER", lookup, T0).status is AuthStatus.OK


def test_wrong_password_and_unknown_user_look_identical(verifier: DigestVerifier) -> None:
    calls: list[tuple[str, str]] = []

    def spy(username: str, algorithm: str) -> str | None:
        calls.append((username, algorithm))
        return lookup(username, algorithm)

    header = verifier.challenge(T0)
    wrong = verifier.verify(_answer(header, "alice", "x"), "REGISTER", spy, T0)
    unknown = verifier.verify(_answer(header, "mallory", "x"), "REGISTER", spy, T0)
    assert wrong.status is unknown.status is AuthStatus.FAILED
    assert wrong.reason == unknown.reason == "invalid credentials"
    assert calls == [("alice", "SHA-256"), ("mallory", "SHA-256")]


@pytest.mark.parametrize(
    "changes",
    [
        {"realm": "other.example.com"},
        {"username": None},
        {"response": None},
        {"uri": None},
        {"nonce": None},
        {"cnonce": None},
        {"nc": None},
        {"nc": "00000000"},
        {"nc": "1"},
        {"nc": "0000000g"},
        {"nc": "000000001"},
        {"nc": " 0000001"},
        {"qop": "auth-int"},
        {"algorithm": "SHA-512"},
        {"algorithm": "MD5"},  # response length no longer matches the algorithm
        {"response": "zz" * 32},
        {"response": "0" * 63 + "g"},
        {"response": "0" * 63 + " "},
        {"scheme": "Basic"},
    ],
)
def test_verify_rejects_bad_params(verifier: DigestVerifier, changes: dict[str, str]) -> None:
    header = verifier.challenge(T0)
    good = _answer(header, "alice", "wonderland")
    fields = {n: getattr(good, n) for n in _CR_NAMES} | {"scheme": good.scheme} | changes
    r = verifier.verify(Credentials(**fields), "REGISTER", lookup, T0)
    assert r.status is AuthStatus.FAILED


def test_verify_wrong_method_fails(verifier: DigestVerifier) -> None:
    creds = _answer(verifier.challenge(T0), "alice", "wonderland")
    assert verifier.verify(creds, "INVITE", lookup, T0).status is AuthStatus.FAILED


def test_verify_rfc2069_no_qop(verifier: DigestVerifier) -> None:
    nm = verifier.nonces
    nonce = nm.make(T0, REALM)
    ch = DigestChallenge(realm=REALM, nonce=nonce)  # no qop, no algorithm (MD5)
    creds = answer_challenge(ch, username="bob", password="builder", method="REGISTER",
                             uri="sip:pool.example.com", cnonce="ignored")  # fmt: skip
    assert creds.qop is None and creds.nc is None
    assert verifier.verify(creds, "REGISTER", lookup, T0).status is AuthStatus.OK
    # reuse of an RFC 2069 nonce cannot be told from a replay: re-challenge with stale=true
    assert verifier.verify(creds, "REGISTER", lookup, T0).status is AuthStatus.STALE
    strict = DigestVerifier(nm, REALM, allow_no_qop=False)
    fresh = answer_challenge(
        DigestChallenge(realm=REALM, nonce=nm.make(T0, REALM)), username="bob",
        password="builder", method="REGISTER", uri="sip:pool.example.com", cnonce="x",
    )  # fmt: skip
    assert strict.verify(fresh, "REGISTER", lookup, T0).status is AuthStatus.FAILED


def test_verify_evicted_nonce_is_stale_not_replayable() -> None:
    v = DigestVerifier(NonceManager(SECRET), REALM, tracker=NonceCountTracker(max_entries=1))
    h1 = v.challenge(T0)
    h2 = v.challenge(T0 + 1)
    c1 = _answer(h1, "alice", "wonderland")
    assert v.verify(c1, "REGISTER", lookup, T0 + 1).status is AuthStatus.OK
    c2 = _answer(h2, "alice", "wonderland")
    assert v.verify(c2, "REGISTER", lookup, T0 + 2).status is AuthStatus.OK  # evicts h1
    assert v.verify(c1, "REGISTER", lookup, T0 + 3).status is AuthStatus.STALE
