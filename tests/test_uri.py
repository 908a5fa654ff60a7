"""Unit tests of :mod:`sipstack.uri` (RFC 3261 §19.1, §25.1; RFC 3966; RFC 4475 §3.3.4)."""

from __future__ import annotations

import pytest

from sipstack.errors import SipParseError
from sipstack.uri import AbsoluteUri, SipUri, TelUri, parse_uri, unescape

# ------------------------------------------------------------------------ RFC 3261 §19.1.3


def test_rfc3261_examples_simple() -> None:
    u = parse_uri("sip:alice@atlanta.com")
    assert u == SipUri("sip", "alice", None, "atlanta.com", None, {}, [])
    assert str(u) == "sip:alice@atlanta.com"


def test_user_and_password() -> None:
    u = parse_uri("sip:alice:secretword@atlanta.com;transport=tcp")
    assert isinstance(u, SipUri)
    assert u.user == "alice"
    assert u.password == "secretword"
    assert u.host == "atlanta.com"
    assert u.params == {"transport": "tcp"}
    assert u.transport == "tcp"
    assert str(u) == "sip:alice:secretword@atlanta.com;transport=tcp"


def test_empty_password_is_kept() -> None:
    u = parse_uri("sip:alice:@atlanta.com")
    assert isinstance(u, SipUri)
    assert u.password == ""
    assert str(u) == "sip:alice:@atlanta.com"


def test_sips_with_headers() -> None:
    u = parse_uri("sips:alice@atlanta.com?subject=project%20x&priority=urgent")
    assert isinstance(u, SipUri)
    assert u.scheme == "sips"
    assert u.headers == [("subject", "project%20x"), ("priority", "urgent")]
    assert str(u) == "sips:alice@atlanta.com?subject=project%20x&priority=urgent"


def test_telephone_subscriber_user_with_user_param() -> None:
    u = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert isinstance(u, SipUri)
    assert u.user == "+1-212-555-1212"
    assert u.password == "1234"
    assert u.param("user") == "phone"


def test_ipv4_host_without_user() -> None:
    u = parse_uri("sips:1212@gateway.com")
    assert isinstance(u, SipUri) and u.user == "1212"
    v = parse_uri("sip:alice@192.0.2.4")
    assert isinstance(v, SipUri) and v.host == "192.0.2.4" and v.port is None
    w = parse_uri("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com")
    assert isinstance(w, SipUri)
    assert w.user is None and w.host == "atlanta.com"
    assert w.params == {"method": "REGISTER"}
    assert w.headers == [("to", "alice%40atlanta.com")]


def test_escaped_semicolon_in_user() -> None:
    u = parse_uri("sip:alice;day=tuesday@atlanta.com")
    assert isinstance(u, SipUri)
    assert u.user == "alice;day=tuesday"
    assert u.host == "atlanta.com"
    assert u.params == {}


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:alice@[2001:db8::1]:5061", "[2001:db8::1]", 5061),
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sips:bob@[::ffff:192.0.2.1];transport=tls", "[::ffff:192.0.2.1]", None),
        ("sip:host.example.com:0", "host.example.com", 0),
        ("sip:host.example.com:65535", "host.example.com", 65535),
        ("sip:example.com.", "example.com.", None),
    ],
)
def test_host_and_port(text: str, host: str, port: int | None) -> None:
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    assert (u.host, u.port) == (host, port)
    assert str(u) == text
    assert u.host_port == (host if port is None else f"{host}:{port}")


def test_params_flags_and_order_kept() -> None:
    text = "sip:proxy.example.com;lr;transport=TLS;maddr=192.0.2.1;ttl=15;unknown-no-value"
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    assert list(u.params) == ["lr", "transport", "maddr", "ttl", "unknown-no-value"]
    assert u.params["lr"] is None
    assert u.param("lr") == ""
    assert u.param("LR") == ""
    assert u.param("Transport") == "TLS"
    assert u.transport == "tls"
    assert u.param("missing") is None
    assert str(u) == text


def test_escapes_are_kept_as_written() -> None:
    text = "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    assert u.user == "cal%6Cer"
    assert unescape(u.user) == "caller"
    assert u.params == {"%6C%72": None, "n%61me": "v%61lue%25%34%31"}
    assert str(u) == text


def test_escaped_null_and_invalid_utf8() -> None:
    u = parse_uri("sip:null-%00-null@example.com")
    assert isinstance(u, SipUri)
    assert unescape(u.user or "") == "null-\x00-null"
    assert unescape("%ff") == "\udcff"  # kept as a surrogate escape, not lost
    assert unescape("%C3%A9t%C3%A9") == "été"
    assert unescape("no escapes") == "no escapes"


def test_scheme_is_case_insensitive() -> None:
    u = parse_uri("SIP:Alice@Example.COM")
    assert isinstance(u, SipUri)
    assert u.scheme == "sip"
    assert u.user == "Alice"
    assert u.host == "Example.COM"
    v = parse_uri("SiPs:example.com")
    assert isinstance(v, SipUri) and v.scheme == "sips"


def test_aor_normalisation() -> None:
    u = parse_uri("sip:%41lice@Contoso.COM:5061;transport=tls?x=y")
    assert isinstance(u, SipUri)
    assert u.aor() == "sip:alice@contoso.com"
    host_only = parse_uri("sip:Contoso.com")
    assert isinstance(host_only, SipUri)
    assert host_only.aor() == "sip:contoso.com"


# ---------------------------------------------------------------------------- tel, others


def test_tel_uri() -> None:
    u = parse_uri("tel:+1-201-555-0123;ext=42;isub=x")
    assert isinstance(u, TelUri)
    assert u.number == "+1-201-555-0123"
    assert u.params == {"ext": "42", "isub": "x"}
    assert str(u) == "tel:+1-201-555-0123;ext=42;isub=x"
    local = parse_uri("TEL:7042;phone-context=example.com")
    assert isinstance(local, TelUri)
    assert str(local) == "tel:7042;phone-context=example.com"
    assert parse_uri(str(local)) == local


def test_tel_equivalence() -> None:
    a = parse_uri("tel:+1-201-555-0123")
    b = parse_uri("tel:+1.201.555.0123")
    c = parse_uri("tel:+1-201-555-0124")
    assert isinstance(a, TelUri)
    assert a.equivalent(b)
    assert not a.equivalent(c)
    assert not a.equivalent(parse_uri("sip:+12015550123@example.com"))


@pytest.mark.parametrize("text", ["tel:", "tel:12 34", "tel:abc;", "tel:+", "tel:;x=y"])
def test_bad_tel(text: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "text",
    [
        "isbn:2983792873",
        "http://www.example.com",
        "name:John_Smith",
        "soap.beep://192.0.2.103:3002",
        "nobodyKnowsThisScheme:totallyopaquecontent",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "mailto:alice@example.com",
    ],
)
def test_unknown_schemes_kept_opaque(text: str) -> None:
    u = parse_uri(text)
    assert isinstance(u, AbsoluteUri)
    scheme, _, opaque = text.partition(":")
    assert (u.scheme, u.opaque) == (scheme, opaque)
    assert str(u) == text
    assert parse_uri(str(u)) == u
    assert u.equivalent(parse_uri(text.replace(scheme, scheme.upper(), 1)))


# --------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip",
        "sip:",
        ":foo",
        "1sip:host",
        "<sip:user@example.com>",
        "sip:user@example.com; lr",
        "sip:user@example.com;",
        "sip:user@example.com;;lr",
        "sip:user@example.com;a=",
        "sip:user@example.com:",
        "sip:user@example.com:99999",
        "sip:user@example.com:123456",
        "sip:user@example.com:5o60",
        "sip:user@",
        "sip:@example.com",
        "sip:us er@example.com",
        "sip:user@exa mple.com",
        "sip:user@-example.com",
        "sip:user@example.com?",
        "sip:user@example.com?a",
        "sip:user@example.com?a=b&",
        "sip:bad%zzescape@example.com",
        "sip:bad%2@example.com",
        "sip:user@[2001:db8::1",
        "sip:user@[2001:db8::1]x",
        "sip:user@[2001:db8:::1:2:3:4:5]",
        "sip:user@[not:an:ip]",
        "sip:user@example.com;transport=t<cp",
        "sip:user@example.com>",
        "sip:a@b@c",
        "http:",
        "http:with space",
        'http:quote"',
        "http:ctrl\x00",
    ],
)
def test_bad_uris(text: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_uri(text)
    assert exc.value.status == 400


# ------------------------------------------------------------------ equivalence §19.1.4

EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:alice@[2001:DB8::1]", "sip:alice@[2001:db8:0:0::1]"),
]

NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice@atlanta.com", "sip:atlanta.com"),
    ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;maddr=192.0.2.1", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;user=phone", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;ttl=1", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;method=INVITE", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com;x=1", "sip:alice@atlanta.com;x=2"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert isinstance(ua, SipUri)
    assert ua.equivalent(ub)
    assert ub.equivalent(ua)  # type: ignore[union-attr]


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_not_equivalent(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert isinstance(ua, SipUri)
    assert not ua.equivalent(ub)
    assert not ub.equivalent(ua)  # type: ignore[union-attr]


def test_equivalent_with_other_types() -> None:
    u = parse_uri("sip:alice@atlanta.com")
    assert isinstance(u, SipUri)
    assert not u.equivalent("sip:alice@atlanta.com")
    assert not u.equivalent(parse_uri("tel:+1234"))


# --------------------------------------------------------------------- fast/slow paths


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice@atlanta.com:5060;transport=tcp;lr",
        "sips:host",
        "sip:host;maddr=[2001:db8::1]",
        "sip:a-b.c_d!e~f*g'h(i)j&k=l+m$n,o@h-1.example",
    ],
)
def test_fast_path_matches_reference_parser(text: str) -> None:
    from sipstack import uri as mod

    assert mod._FAST_SIP_RE.match(text) is not None
    scheme, _, rest = text.partition(":")
    assert parse_uri(text) == mod._parse_sip(scheme.lower(), rest)


def test_parse_uri_round_trip_fields_are_independent() -> None:
    a = parse_uri("sip:a@b")
    b = parse_uri("sip:a@b")
    assert isinstance(a, SipUri) and isinstance(b, SipUri)
    a.params["lr"] = None
    assert b.params == {}
