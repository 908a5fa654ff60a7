"""Unit tests of :mod:`sipstack.headers` (RFC 3261 §7.3, §20, §25.1; RFC 3581; RFC 5626)."""

from __future__ import annotations

import pytest

from sipstack.errors import SipParseError
from sipstack.headers import (
    COMPACT_FORMS,
    CSeq,
    NameAddr,
    Via,
    canonical_name,
    check_name_addr,
    header_key,
    is_token,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_token_list,
    parse_uint,
    parse_via,
    split_commas,
    unquote,
)
from sipstack.uri import AbsoluteUri, SipUri, TelUri, parse_uri

# ---------------------------------------------------------------------------- header names

RFC3261_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "f": "from",
    "t": "to",
    "v": "via",
    "k": "supported",
    "s": "subject",
    "c": "content-type",
}
EXTENSION_COMPACT = {"o": "event", "u": "allow-events", "r": "refer-to", "b": "referred-by"}


@pytest.mark.parametrize(("short", "key"), sorted({**RFC3261_COMPACT, **EXTENSION_COMPACT}.items()))
def test_compact_forms(short: str, key: str) -> None:
    assert COMPACT_FORMS[short] == key
    assert header_key(short) == key
    assert header_key(short.upper()) == key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Via", "via"),
        ("VIA", "via"),
        ("vIa", "via"),
        ("Call-ID", "call-id"),
        ("call-id", "call-id"),
        ("CSEQ", "cseq"),
        ("MaX-fOrWaRdS", "max-forwards"),
        ("X-Custom-Header", "x-custom-header"),
    ],
)
def test_header_key_is_case_insensitive(name: str, key: str) -> None:
    assert header_key(name) == key


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("max-forwards", "Max-Forwards"),
        ("user-agent", "User-Agent"),
        ("via", "Via"),
        ("p-asserted-identity", "P-Asserted-Identity"),
        ("mime-version", "MIME-Version"),
    ],
)
def test_canonical_names(key: str, name: str) -> None:
    assert canonical_name(key) == name


def test_is_token() -> None:
    assert is_token("REGISTER")
    assert is_token("!interesting-Method0123456789_*+`.%indeed'~")
    assert not is_token("")
    assert not is_token("a b")
    assert not is_token("a:b")
    assert not is_token("a,b")


# ------------------------------------------------------------------------------- lists


@pytest.mark.parametrize(
    ("value", "parts"),
    [
        ("a", ["a"]),
        ("a, b ,c", ["a", "b", "c"]),
        ("a,,b", ["a", "", "b"]),
        ("a,", ["a", ""]),
        ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', "<sip:k@y>"]),
        ("<sip:a,b@x>;q=1, <sip:c@y>", ["<sip:a,b@x>;q=1", "<sip:c@y>"]),
        ('"a<b" <sip:x@y>, <sip:z@w>', ['"a<b" <sip:x@y>', "<sip:z@w>"]),
        ('"a\\",b" <sip:x@y>, <sip:z@w>', ['"a\\",b" <sip:x@y>', "<sip:z@w>"]),
        (
            '<sip:a@b>;+sip.instance="<urn:uuid:1,2>", <sip:c@d>',
            ['<sip:a@b>;+sip.instance="<urn:uuid:1,2>"', "<sip:c@d>"],
        ),
        ('"unterminated, x', ['"unterminated, x']),
        ("<sip:open, x", ["<sip:open, x"]),
        (
            "SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/TCP b",
            ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/TCP b"],
        ),
    ],
)
def test_split_commas(value: str, parts: list[str]) -> None:
    assert split_commas(value) == parts


def test_parse_token_list() -> None:
    assert parse_token_list("path, outbound ,gruu") == ["path", "outbound", "gruu"]
    assert parse_token_list("") == []
    assert parse_token_list("  ") == []
    for bad in ("a,,b", "a,", "a b", "a;b"):
        with pytest.raises(SipParseError):
            parse_token_list(bad)


# --------------------------------------------------------------------------- parameters


def test_parse_params() -> None:
    assert parse_params("") == {}
    assert parse_params(";tag=abc") == {"tag": "abc"}
    assert parse_params(" ; TAG = abc ; lr ;q=0.5") == {"tag": "abc", "lr": None, "q": "0.5"}
    assert parse_params(';+sip.instance="<urn:uuid:0C67446E-F1A1-11D9-94D3-000A95A0E128>"') == {
        "+sip.instance": '"<urn:uuid:0C67446E-F1A1-11D9-94D3-000A95A0E128>"'
    }
    assert parse_params(';x="a;b\\"c"') == {"x": '"a;b\\"c"'}
    assert parse_params(";received=[2001:db8::1];maddr=192.0.2.1") == {
        "received": "[2001:db8::1]",
        "maddr": "192.0.2.1",
    }


@pytest.mark.parametrize(
    "text",
    [
        ";", ";;", ";tag=", ";tag=a b", "tag=a", "x;tag=a", ';x="open', ';x="a"b', ";a=<b>",
        ";a=b,c", ";a b", ";a=b=c", ";a=b/c",
    ],
)
def test_bad_params(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_params(text)


def test_unquote() -> None:
    assert unquote('"abc"') == "abc"
    assert unquote('"a\\"b\\\\c"') == 'a"b\\c'
    assert unquote("token") == "token"


def test_parse_uint() -> None:
    assert parse_uint("0068", 255, "Max-Forwards") == 68
    assert parse_uint(" 70 ", 255, "Max-Forwards") == 70
    for bad in ("", "-1", "+1", "1.0", "0x10", "256", "٣", "1 2", "99999999999999999999999"):
        with pytest.raises(SipParseError):
            parse_uint(bad, 255, "Max-Forwards")


# ---------------------------------------------------------------------------------- Via


def test_via_typical() -> None:
    via = parse_via("SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport")
    params = {"branch": "z9hG4bK776asdhds", "rport": None}
    assert via == Via("UDP", "pc33.atlanta.com", 5066, params)
    assert via.branch == "z9hG4bK776asdhds"
    assert via.sent_by == "pc33.atlanta.com:5066"
    assert via.has_rport and via.rport is None
    assert via.received is None
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport"


def test_via_received_rport() -> None:
    via = parse_via("SIP/2.0/TLS client.example.com;branch=z9hG4bKx;received=192.0.2.1;rport=49152")
    assert via.transport == "TLS"
    assert via.port is None
    assert via.received == "192.0.2.1"
    assert via.rport == 49152
    assert via.has_rport


def test_via_lws_and_case() -> None:
    via = parse_via("SIP  /   2.0 /udp   spindle.example.com  :  5060  ;  branch  =   z9hG4bK9ikj8")
    assert via.protocol == "SIP/2.0"
    assert via.transport == "UDP"
    assert (via.host, via.port) == ("spindle.example.com", 5060)
    assert via.branch == "z9hG4bK9ikj8"


def test_via_ipv6_and_unknown_transport() -> None:
    via = parse_via("SIP/2.0/WS [2001:db8::9]:8080;branch=z9hG4bKa")
    assert (via.transport, via.host, via.port) == ("WS", "[2001:db8::9]", 8080)
    other = parse_via("SIP/2.0/NEWTRANSPORT host.example.com;branch=z9hG4bKb")
    assert other.transport == "NEWTRANSPORT"


def test_via_round_trip() -> None:
    for text in (
        "SIP/2.0/UDP 192.0.2.1",
        "SIP/2.0/TCP host;branch=z9hG4bK1;received=192.0.2.2;rport=5060;ttl=16;maddr=224.2.0.1",
        "SIP/2.0/TLS [::1]:5061;branch=z9hG4bK2;alias",
    ):
        via = parse_via(text)
        assert str(via) == text
        assert parse_via(str(via)) == via


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host:",
        "SIP/2.0/UDP host;;branch=z9hG4bK1",
        "SIP/2.0/UDP host;branch=",
        "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP host;rport=70000",
        "SIP/2.0/UDP host;ttl=256",
        "SIP/2.0/UDP host;ttl",
        "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP [::1::2]",
        "SIP/2.0/UDP host junk",
    ],
)
def test_bad_via(text: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_via(text)
    assert exc.value.status == 400


# ----------------------------------------------------------------------------- NameAddr


def test_name_addr_forms() -> None:
    a = parse_name_addr('"Alice Liddell" <sip:alice@atlanta.com>;tag=1928301774')
    assert a.display_name == "Alice Liddell"
    assert a.uri == SipUri("sip", "alice", None, "atlanta.com")
    assert a.tag == "1928301774"
    b = parse_name_addr("Bob <sip:bob@biloxi.com>")
    assert b.display_name == "Bob" and b.tag is None
    c = parse_name_addr("<sip:carol@chicago.com>")
    assert c.display_name is None
    d = parse_name_addr("sip:dave@example.com;tag=8814")
    assert d.display_name is None
    assert isinstance(d.uri, SipUri) and d.uri.params == {}
    assert d.params == {"tag": "8814"}
    e = parse_name_addr("token1~` token2'+_  token3*%!.- <sip:mundane@example.com>")
    assert e.display_name == "token1~` token2'+_ token3*%!.-"


def test_addr_spec_params_are_header_params() -> None:
    # RFC 3261 §20.10: without <>, ;params belong to the header, not to the URI.
    na = parse_name_addr("sip:alice@atlanta.com;transport=tcp;expires=60")
    assert isinstance(na.uri, SipUri)
    assert na.uri.params == {}
    assert na.params == {"transport": "tcp", "expires": "60"}
    assert na.expires == 60
    inside = parse_name_addr("<sip:alice@atlanta.com;transport=tcp>;expires=60")
    assert isinstance(inside.uri, SipUri)
    assert inside.uri.params == {"transport": "tcp"}
    assert inside.params == {"expires": "60"}


def test_addr_spec_with_instance_param() -> None:
    na = parse_name_addr('sip:alice@192.0.2.1;+sip.instance="<urn:uuid:1234>";reg-id=2')
    assert na.display_name is None
    assert na.instance_id == "urn:uuid:1234"
    assert na.reg_id == 2


def test_quoted_display_name_escapes() -> None:
    na = parse_name_addr('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>')
    assert na.display_name == 'J Rosenberg \\"'
    assert parse_name_addr(str(na)) == na
    empty = parse_name_addr('"" <sip:x@y>')
    assert empty.display_name == ""
    assert str(empty) == '"" <sip:x@y>'
    glued = parse_name_addr('"caller"<sip:caller@example.com>;tag=323')
    assert glued.display_name == "caller" and glued.tag == "323"


def test_spaces_inside_angle_brackets_are_tolerated() -> None:
    na = parse_name_addr('"Watson, Thomas" < sip:t.watson@example.org >')
    assert isinstance(na.uri, SipUri)
    assert na.uri.host == "example.org"
    na2 = parse_name_addr("< sip:t.watson@example.org >;tag=1")
    assert na2.tag == "1"


def test_other_schemes_in_name_addr() -> None:
    assert isinstance(parse_name_addr("<http://www.example.com>").uri, AbsoluteUri)
    assert isinstance(parse_name_addr("isbn:2983792873").uri, AbsoluteUri)
    tel = parse_name_addr("<tel:+1-201-555-0123>;tag=x")
    assert isinstance(tel.uri, TelUri)
    with pytest.raises(SipParseError) as exc:
        tel.sip_uri  # noqa: B018
    assert exc.value.status == 416


def test_contact_star() -> None:
    star = parse_name_addr("*")
    assert star.wildcard and star.uri is None
    assert str(star) == "*"
    assert parse_name_addr(" * ").wildcard


def test_contact_params() -> None:
    na = parse_name_addr(
        '<sip:alice@192.0.2.15:49152;transport=tls;ob>;expires=3600;q=0.7;'
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1'
    )
    assert na.expires == 3600
    assert na.q == 0.7
    assert na.instance_id == "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"
    assert na.reg_id == 1
    assert na.sip_uri.param("ob") == ""
    plain = parse_name_addr("<sip:a@b>")
    assert plain.expires is None and plain.q is None
    assert plain.instance_id is None and plain.reg_id is None


@pytest.mark.parametrize("q", ["0", "0.", "0.5", "0.123", "1", "1.0", "1.000"])
def test_good_q(q: str) -> None:
    assert parse_name_addr(f"<sip:a@b>;q={q}").q == float(q)


@pytest.mark.parametrize("q", ["1.5", "2", "0.1234", "-1", "abc", ".5"])
def test_bad_q(q: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(f"<sip:a@b>;q={q}").q  # noqa: B018


@pytest.mark.parametrize(
    ("param", "prop"),
    [
        ("expires=4294967296", "expires"),
        ("expires=-1", "expires"),
        ("expires", "expires"),
        ("reg-id=0", "reg_id"),
        ("reg-id=x", "reg_id"),
        ("reg-id=2147483648", "reg_id"),
    ],
)
def test_bad_numeric_contact_params(param: str, prop: str) -> None:
    na = parse_name_addr(f"<sip:a@b>;{param}")
    with pytest.raises(SipParseError):
        getattr(na, prop)


def test_name_addr_str_round_trip() -> None:
    for text in (
        '"Alice" <sip:alice@atlanta.com>;tag=1',
        "<sip:alice@atlanta.com;lr>",
        '<sip:a@b>;+sip.instance="<urn:uuid:1>";reg-id=1',
    ):
        na = parse_name_addr(text)
        assert str(na) == text
        assert parse_name_addr(str(na)) == na
    token = parse_name_addr("Bob  Smith <sip:b@c>")
    assert str(token) == '"Bob Smith" <sip:b@c>'
    assert str(parse_name_addr("sip:b@c;tag=1")) == "<sip:b@c>;tag=1"
    assert str(NameAddr(None, wildcard=True)) == "*"


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"Mr. J. User <sip:j.user@example.com>',
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>;tag=43",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        "sip:user@example.com,sip:other@example.com",
        "<sip:user@example.com",
        '"Quoted" sip:user@example.com',
        "<sip:user@example.com> junk",
        "<sip:user@example.com>;;tag=1",
        "<sip:user@example.com>;tag=",
        "<>",
        "< >",
        "<sip:user@exa mple.com>",
        "sip:user@example.com junk",
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_name_addr(text)
    assert exc.value.status == 400


# --------------------------------------------------------------------------------- CSeq


def test_cseq() -> None:
    assert parse_cseq("314159 REGISTER") == CSeq(314159, "REGISTER")
    assert parse_cseq("0009\t INVITE") == CSeq(9, "INVITE")
    assert parse_cseq("2147483647 OPTIONS").number == 2**31 - 1
    assert str(CSeq(1, "ACK")) == "1 ACK"


@pytest.mark.parametrize(
    "text",
    [
        "", "1", "INVITE", "1 INVITE x", "-1 INVITE", "2147483648 INVITE",
        "36893488147419103232 INVITE", "1 INV,ITE", "a INVITE", "1  INV ITE", "٣ INVITE",
    ],
)
def test_bad_cseq(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_cseq(text)


@pytest.mark.parametrize(
    "value",
    [
        "<sip:alice@example.com:5061;transport=TCP>;expires=60",
        "<SIP:alice@Example.com>",
        "<sip:alice@example.com:05060>",
        '"Alice" <sips:alice@example.com;lr>;tag=1',
        "sip:alice@example.com;tag=2",
        "<sip:alice@[2001:db8::1]:5060>",
    ],
)
def test_name_addr_uri_text_is_str_of_uri(value: str) -> None:
    """uri_text, when the parser sets it, is exactly str(uri) (the registrar stores it)."""
    na = parse_name_addr(value)
    assert na.uri_text is None or na.uri_text == str(na.uri)
    assert parse_name_addr(value) == na  # uri_text is not compared


def test_check_name_addr_agrees_with_parse() -> None:
    """check_name_addr accepts exactly what parse_name_addr accepts."""
    assert check_name_addr("<sip:a@example.com>;tag=1") is None  # the usual From: not parsed
    assert check_name_addr("<sip:a@example.com>;tag=1;x=2") == parse_name_addr(
        "<sip:a@example.com>;tag=1;x=2"
    )
    for bad in ("<sip:a@example.com:99999>;tag=1", "<sip:a@example.com", '"unterminated <sip:a@b>'):
        with pytest.raises(SipParseError):
            check_name_addr(bad)


def test_no_possessive_group_repeats_in_the_sources() -> None:
    # Python 3.11.0-3.11.4 (Debian 12's python3 is 3.11.2) match "(?:...)*+" wrongly
    # (CPython gh-106052): our patterns write a possessive group repeat as "(?>(?:...)*)".
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted([*root.glob("sipstack/**/*.py"), *root.glob("registrar/**/*.py")])
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and re.search(r"\)(?:[*+?]|\{[0-9,]*\})\+", line)
    ]
    assert offenders == []


@pytest.mark.parametrize("text", [";", ";;", ";a=", "; a b", ';a="x'])
def test_parameter_lists_that_a_faulty_possessive_repeat_would_pass(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_params(text)


def test_name_addr_memo_gives_independent_objects_and_stays_bounded() -> None:
    """The match memo keeps strings only: each parse of one text builds its own objects, and
    the memo never holds more than MEMO_SIZE texts."""
    from sipstack import headers as mod
    from sipstack import uri as uri_mod

    text = '"Bob" <sip:bob@example.com:5070;transport=tcp>;tag=1;expires=60'
    a, b = parse_name_addr(text), parse_name_addr(text)
    assert a == b and a is not b and a.uri is not b.uri
    a.params["q"] = "1"
    assert isinstance(a.uri, SipUri)
    a.uri.params["lr"] = None
    assert parse_name_addr(text) == b and "q" not in b.params
    assert isinstance(b.uri, SipUri) and "lr" not in b.uri.params
    assert check_name_addr("<sip:bob@example.com>;tag=1") is None
    assert check_name_addr("<sip:bob@example.com>;tag=1") is None  # a memo hit
    with pytest.raises(SipParseError):
        check_name_addr("<sip:bob@example.com:99999>")
    with pytest.raises(SipParseError):
        check_name_addr("<sip:bob@example.com:99999>")  # still raises from the memo
    for i in range(uri_mod.MEMO_SIZE + 10):
        parse_name_addr(f"<sip:u{i}@example.com>")
        parse_uri(f"sip:u{i}@example.com")
    assert len(mod._NAME_ADDR_MEMO) <= uri_mod.MEMO_SIZE
    assert len(uri_mod.SIP_URI_MEMO) <= uri_mod.MEMO_SIZE
