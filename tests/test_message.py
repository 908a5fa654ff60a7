"""Unit tests of :mod:`sipstack.message` and :mod:`sipstack.parser` (RFC 3261 §7, §8.2, §20)."""

from __future__ import annotations

import pytest

from sipstack.errors import SipParseError
from sipstack.headers import CSeq
from sipstack.message import Message, Request, Response, make_response
from sipstack.parser import parse_message, validate_request, validate_response
from sipstack.uri import SipUri


def crlf(text: str) -> bytes:
    """The message ``text`` written with ``\\n`` line ends, as wire bytes with CRLF."""
    return text.replace("\n", "\r\n").encode()


REGISTER = crlf(
    "REGISTER sip:contoso.com SIP/2.0\n"
    "Via: SIP/2.0/TLS 192.0.2.15:49152;branch=z9hG4bK776asdhds;rport\n"
    "Max-Forwards: 70\n"
    'To: "Alice" <sip:alice@contoso.com>\n'
    'From: "Alice" <sip:alice@contoso.com>;tag=1928301774\n'
    "Call-ID: a84b4c76e66710@pc33.contoso.com\n"
    "CSeq: 314159 REGISTER\n"
    "Contact: <sip:alice@192.0.2.15:49152;transport=tls;ob>"
    ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1\n'
    "Expires: 3600\n"
    "Supported: path, outbound\n"
    "User-Agent: ExamplePhone/1.2.3\n"
    "Content-Length: 0\n"
    "\n"
)


def register() -> Request:
    msg = parse_message(REGISTER)
    assert isinstance(msg, Request)
    return msg


# ------------------------------------------------------------------------------ parsing


def test_parse_typical_register() -> None:
    req = register()
    assert (req.method, req.uri, req.version) == ("REGISTER", "sip:contoso.com", "SIP/2.0")
    assert req.request_uri == SipUri("sip", None, None, "contoso.com")
    assert [k for k, _, _ in req.headers] == [
        "via", "max-forwards", "to", "from", "call-id", "cseq", "contact", "expires",
        "supported", "user-agent", "content-length",
    ]
    validate_request(req)
    via = req.top_via
    assert via.transport == "TLS" and via.branch == "z9hG4bK776asdhds" and via.has_rport
    assert (via.host, via.port) == ("192.0.2.15", 49152)
    assert req.max_forwards == 70
    assert req.to.display_name == "Alice" and req.to.tag is None
    assert req.from_.tag == "1928301774"
    assert req.call_id == "a84b4c76e66710@pc33.contoso.com"
    assert req.cseq == CSeq(314159, "REGISTER")
    [contact] = req.contacts
    assert contact.instance_id == "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"
    assert contact.reg_id == 1
    assert req.expires == 3600
    assert req.tokens("Supported") == ["path", "outbound"]
    assert req.tokens("k") == ["path", "outbound"]
    assert req.content_length == 0
    assert req.body == b""
    assert req.encode() == REGISTER


def test_parse_response() -> None:
    data = crlf(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:b@example.com>;tag=2\n"
        "Call-ID: x\n"
        "CSeq: 1 INVITE\n"
        "Content-Length: 0\n\n"
    )
    resp = parse_message(data)
    assert isinstance(resp, Response)
    assert (resp.status, resp.reason) == (200, "OK")
    validate_response(resp)
    assert resp.encode() == data


def test_reason_phrases() -> None:
    base = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 0\n\n"
    empty = parse_message(crlf("SIP/2.0 100 \n" + base))
    assert isinstance(empty, Response) and empty.reason == ""
    odd = parse_message(crlf("SIP/2.0 420 Bad  Extension: %¤ é\n" + base))
    assert isinstance(odd, Response) and odd.reason == "Bad  Extension: %¤ é"
    assert Response(404).reason == "Not Found"
    assert Response(299).reason == ""
    assert Response(200, "Fine").start_line() == "SIP/2.0 200 Fine"


def test_compact_forms_and_case() -> None:
    data = crlf(
        "OPTIONS sip:h SIP/2.0\n"
        "v: SIP/2.0/UDP h;branch=z9hG4bK1\n"
        "f: <sip:a@h>;tag=1\n"
        "t: <sip:b@h>\n"
        "i: abc\n"
        "CSEQ: 1 OPTIONS\n"
        "m: <sip:a@192.0.2.1>\n"
        "k: path\n"
        "s: subject\n"
        "c: text/plain\n"
        "e: gzip\n"
        "o: presence\n"
        "u: presence\n"
        "r: <sip:c@h>\n"
        "b: <sip:d@h>\n"
        "l: 0\n\n"
    )
    req = parse_message(data)
    assert isinstance(req, Request)
    validate_request(req)
    assert req.get("Call-ID") == req.get("i") == req.get("CALL-ID") == "abc"
    assert req.get("Content-Type") == "text/plain"
    assert req.get("Content-Encoding") == "gzip"
    assert req.get("Event") == "presence"
    assert req.get("Allow-Events") == "presence"
    assert req.get("Refer-To") == "<sip:c@h>"
    assert req.get("Referred-By") == "<sip:d@h>"
    assert req.get("Subject") == "subject"
    assert req.get("Supported") == "path"
    assert req.content_type == "text/plain"
    assert req.content_length == 0
    # Well-known names are written back in their canonical spelling.
    assert [n for _, n, _ in req.headers][:5] == ["Via", "From", "To", "Call-ID", "CSeq"]


def test_unknown_header_name_keeps_its_spelling() -> None:
    req = parse_message(crlf("OPTIONS sip:h SIP/2.0\nx-MiXeD-Case : v\nContent-Length: 0\n\n"))
    assert req.headers[0] == ("x-mixed-case", "x-MiXeD-Case", "v")
    assert req.get("X-Mixed-Case") == "v"
    assert b"x-MiXeD-Case: v\r\n" in req.encode()


def test_line_folding() -> None:
    data = crlf(
        "INVITE sip:h SIP/2.0\n"
        "Subject: I know you're there,\n"
        "         pick up the phone\n"
        "\t and talk to me!\n"
        "Via: SIP/2.0/UDP\n"
        "  h;\n"
        "  branch=z9hG4bK1\n"
        "Content-Length: 0\n\n"
    )
    req = parse_message(data)
    assert req.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert req.get("Via") == "SIP/2.0/UDP h; branch=z9hG4bK1"
    assert req.top_via.branch == "z9hG4bK1"
    assert b"\r\n " not in req.encode()


def test_folding_before_first_header_is_an_error() -> None:
    with pytest.raises(SipParseError):
        parse_message(crlf("OPTIONS sip:h SIP/2.0\n continued\nContent-Length: 0\n\n"))


def test_via_across_lines_and_commas() -> None:
    data = crlf(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com:5070"
        ";branch=z9hG4bK2;received=192.0.2.2\n"
        "From: <sip:a@example.com>;tag=1\n"
        "v: SIP/2.0/TLS c.example.com;branch=z9hG4bK3\n"
        "To: <sip:b@example.com>;tag=2\n"
        "Call-ID: x\n"
        "CSeq: 1 INVITE\n"
        "Content-Length: 0\n\n"
    )
    resp = parse_message(data)
    validate_response(resp)  # type: ignore[arg-type]
    assert [v.host for v in resp.vias] == ["a.example.com", "b.example.com", "c.example.com"]
    assert [v.branch for v in resp.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert resp.vias[1].received == "192.0.2.2" and resp.vias[1].port == 5070
    assert resp.count("Via") == 2
    assert len(resp.values("v")) == 3
    assert resp.pop_first("Via") == "SIP/2.0/UDP a.example.com;branch=z9hG4bK1"
    assert [v.branch for v in resp.vias] == ["z9hG4bK2", "z9hG4bK3"]
    assert resp.pop_first("via") is not None
    assert resp.pop_first("via") is not None
    assert resp.pop_first("via") is None
    assert resp.vias == []
    with pytest.raises(SipParseError):
        resp.top_via  # noqa: B018


def test_contact_lists_and_star() -> None:
    data = crlf(
        "REGISTER sip:h SIP/2.0\n"
        "Via: SIP/2.0/UDP h;branch=z9hG4bK1\n"
        "From: <sip:a@h>;tag=1\nTo: <sip:a@h>\nCall-ID: c\nCSeq: 2 REGISTER\n"
        'Contact: "A, B" <sip:a@192.0.2.1>;q=0.5;expires=60, <sip:a@192.0.2.2>\n'
        "m: sip:a@192.0.2.3;expires=0\n"
        "Content-Length: 0\n\n"
    )
    req = parse_message(data)
    assert isinstance(req, Request)
    validate_request(req)
    contacts = req.contacts
    assert [c.display_name for c in contacts] == ["A, B", None, None]
    assert [c.expires for c in contacts] == [60, None, 0]
    assert [c.q for c in contacts] == [0.5, None, None]
    listed = b'"A, B" <sip:a@192.0.2.1>;q=0.5;expires=60, <sip:a@192.0.2.2>'
    star = parse_message(data.replace(listed, b"*"))
    assert isinstance(star, Request)
    assert star.contacts[0].wildcard


def test_leading_crlf_and_trailing_octets() -> None:
    body = b"v=0\r\n"
    data = crlf(
        "OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 5\n\n"
    )
    msg = parse_message(b"\r\n\r\n" + data + body + b"garbage")
    assert msg.body == body
    assert msg.encode() == data + body


def test_no_content_length_takes_the_rest() -> None:
    msg = parse_message(crlf("OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h\n\n") + b"body")
    assert msg.body == b"body"


@pytest.mark.parametrize(
    "cl",
    ["-1", "abc", "1.0", "", "12345678901", "٣", "0x1"],
)
def test_bad_content_length(cl: str) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(crlf(f"OPTIONS sip:h SIP/2.0\nContent-Length: {cl}\n\n"))
    assert exc.value.status == 400


def test_content_length_larger_than_body() -> None:
    with pytest.raises(SipParseError):
        parse_message(crlf("OPTIONS sip:h SIP/2.0\nContent-Length: 10\n\n") + b"short")
    with pytest.raises(SipParseError):
        parse_message(crlf("OPTIONS sip:h SIP/2.0\nl: 10\n\n") + b"short", datagram=True)


def test_two_content_lengths_are_rejected() -> None:
    data = crlf(
        "OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@h>;tag=1\n"
        "To: <sip:a@h>\nCall-ID: c\nCSeq: 1 OPTIONS\nContent-Length: 0\nl: 0\n\n"
    )
    with pytest.raises(SipParseError) as exc:
        msg = parse_message(data)
        validate_request(msg)  # type: ignore[arg-type]
    assert exc.value.status == 400


def test_bare_lf_line_ends_are_accepted() -> None:
    data = b"OPTIONS sip:h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 2\n\nhi"
    msg = parse_message(data)
    assert msg.get("Via") == "SIP/2.0/UDP h;branch=z9hG4bK1"
    assert msg.body == b"hi"
    assert msg.encode() == data.replace(b"\n", b"\r\n").replace(b"\r\n\r\nhi", b"\r\n\r\nhi")


def test_bare_lf_inside_crlf_message_splits_lines() -> None:
    data = b"OPTIONS sip:h SIP/2.0\r\nX-A: a\nX-B: b\r\nContent-Length: 0\r\n\r\n"
    msg = parse_message(data)
    assert msg.get("X-A") == "a"
    assert msg.get("X-B") == "b"
    assert b"a\nX" not in msg.encode()


def test_bare_cr_is_rejected() -> None:
    with pytest.raises(SipParseError):
        parse_message(b"OPTIONS sip:h SIP/2.0\r\nX-A: a\rX-B: b\r\nContent-Length: 0\r\n\r\n")


def test_datagram_without_final_blank_line() -> None:
    data = b"OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nl: 0\r\n"
    with pytest.raises(SipParseError):
        parse_message(data)
    msg = parse_message(data, datagram=True)
    assert msg.get("Content-Length") == "0"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"\r\n\r\n", 400),
        (b"garbage\r\n\r\n", 400),
        (b"OPTIONS sip:h\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/2.0 extra\r\n\r\n", 400),
        (b"OPT IONS sip:h SIP/2.0 x\r\n\r\n", 400),
        (b"OPT(IONS sip:h SIP/2.0\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/3.0\r\n\r\n", 505),
        (b"OPTIONS sip:h SIP/2.1\r\n\r\n", 505),
        (b"OPTIONS sip:h HTTP/1.1\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nNo colon here\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nBad Name: x\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/2.0\r\n: x\r\n\r\n", 400),
        (b"OPTIONS sip:h SIP/2.0\r\nBad\xff: x\r\n\r\n", 400),
        (b"SIP/2.0 2000 OK\r\n\r\n", 400),
        (b"SIP/2.0 099 Low\r\n\r\n", 400),
        (b"SIP/2.0 700 High\r\n\r\n", 400),
        (b"SIP/2.0 abc Bad\r\n\r\n", 400),
        (b"SIP/3.0 200 OK\r\n\r\n", 505),
        (b"SIP/2.0\r\n\r\n", 400),
    ],
)
def test_bad_messages(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as exc:
        parse_message(data, datagram=True)
    assert exc.value.status == status


def test_request_line_leniency() -> None:
    msg = parse_message(b"OPTIONS  sip:h  SIP/2.0  \r\nl: 0\r\n\r\n")
    assert isinstance(msg, Request)
    assert msg.start_line() == "OPTIONS sip:h SIP/2.0"


def test_non_utf8_octets_survive_a_round_trip() -> None:
    data = b"OPTIONS sip:h SIP/2.0\r\nX-Raw: \xff\xfe ok\r\nContent-Length: 0\r\n\r\n"
    msg = parse_message(data)
    assert msg.encode() == data


# ------------------------------------------------------------------- validation (400s)


def _req(*headers: str, method: str = "OPTIONS", uri: str = "sip:h") -> Request:
    base = {
        "via": "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
        "from": "From: <sip:a@h>;tag=1",
        "to": "To: <sip:b@h>",
        "call-id": "Call-ID: c1",
        "cseq": f"CSeq: 1 {method}",
        "max-forwards": "Max-Forwards: 70",
    }
    lines = [f"{method} {uri} SIP/2.0"]
    override = {h.split(":", 1)[0].strip().lower(): h for h in headers}
    for key, line in base.items():
        if key in override:
            if override[key] is not None and not override[key].endswith(":DROP"):
                lines.append(override.pop(key))
            else:
                override.pop(key)
        else:
            lines.append(line)
    lines.extend(v for v in override.values())
    lines.append("Content-Length: 0")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(msg, Request)
    return msg


def test_validate_ok() -> None:
    validate_request(_req())


@pytest.mark.parametrize(
    "header",
    [
        "Via:DROP",
        "From:DROP",
        "To:DROP",
        "Call-ID:DROP",
        "CSeq:DROP",
        "Via: SIP/2.0/UDP h;;branch=z9hG4bK1",
        "From: <sip:a@h",
        "To: x@y <sip:b@h>",
        "Call-ID: a b",
        "Call-ID: a,b",
        "CSeq: 1 INVITE",
        "CSeq: 4294967296 OPTIONS",
        "Max-Forwards: 256",
        "Max-Forwards: -1",
        "Max-Forwards: 1, 2",
        "Expires: 4294967296",
        "Expires: soon",
        "Contact: <sip:a@h>;expires=4294967296",
        "Contact: <sip:a@h>;q=2",
        "Contact: <sip:a@h>;reg-id=0",
        "Contact: <sip:a@h>,,<sip:b@h>",
        "Contact: sip:a@h?x=y",
    ],
)
def test_validate_rejects(header: str) -> None:
    req = _req(header)
    with pytest.raises(SipParseError) as exc:
        validate_request(req)
    assert exc.value.status == 400


def test_validate_rejects_duplicates_of_single_valued_headers() -> None:
    req = _req()
    for name, value in [
        ("From", "<sip:x@h>;tag=2"),
        ("To", "<sip:x@h>"),
        ("Call-ID", "c2"),
        ("CSeq", "2 OPTIONS"),
        ("Max-Forwards", "1"),
        ("Content-Type", "text/plain"),
    ]:
        dup = _req()
        dup.add(name, value)
        dup.add(name, value)
        with pytest.raises(SipParseError):
            validate_request(dup)
    validate_request(req)


def test_max_forwards_optional_and_bounds() -> None:
    req = _req("Max-Forwards:DROP")
    validate_request(req)
    assert req.max_forwards is None
    assert _req("Max-Forwards: 0").max_forwards == 0
    assert _req("Max-Forwards: 255").max_forwards == 255


def test_request_uri_checks() -> None:
    with pytest.raises(SipParseError):
        validate_request(_req(uri="sip:h?Route=%3Csip:x%3E"))
    with pytest.raises(SipParseError):
        validate_request(_req(uri="<sip:h>"))
    validate_request(_req(uri="unknownscheme:opaque"))  # 416 is the element's decision


# ------------------------------------------------------------------------ Message API


def test_get_family() -> None:
    req = register()
    assert req.get("via") == req.get("VIA") == req.get("v")
    assert req.get("Missing") is None
    assert req.get("Missing", "dflt") == "dflt"
    assert req.get_all("Supported") == ["path, outbound"]
    assert req.values("Supported") == ["path", "outbound"]
    assert req.values("Call-ID") == ["a84b4c76e66710@pc33.contoso.com"]
    assert req.count("Contact") == 1
    assert "contact" in req and "m" in req and "Route" not in req
    assert 3 not in req  # type: ignore[operator]


def test_add_set_remove_invalidate_typed_views() -> None:
    req = register()
    assert req.max_forwards == 70
    req.set("Max-Forwards", "69")
    assert req.max_forwards == 69
    assert req.count("Max-Forwards") == 1
    assert req.top_via.host == "192.0.2.15"
    req.add("Via", "SIP/2.0/TLS fe1.pool.example.com;branch=z9hG4bKp1", first=True)
    assert req.top_via.host == "fe1.pool.example.com"
    assert len(req.vias) == 2
    assert req.headers[0] == ("via", "Via", "SIP/2.0/TLS fe1.pool.example.com;branch=z9hG4bKp1")
    assert req.tokens("Supported") == ["path", "outbound"]
    req.add("k", "gruu")
    assert req.tokens("Supported") == ["path", "outbound", "gruu"]
    assert req.remove("Supported") == 2
    assert req.tokens("Supported") == []
    assert req.remove("Supported") == 0
    req.set("X-New", "1")
    assert req.headers[-1] == ("x-new", "X-New", "1")
    assert [c.reg_id for c in req.contacts] == [1]
    req.set("Contact", "*")
    assert req.contacts[0].wildcard


def test_headers_assignment_and_invalidate() -> None:
    req = register()
    assert req.call_id == "a84b4c76e66710@pc33.contoso.com"
    req.headers = [h if h[0] != "call-id" else ("call-id", "Call-ID", "new") for h in req.headers]
    assert req.call_id == "new"
    req.headers[4] = ("call-id", "Call-ID", "newer")
    req.invalidate()
    assert req.call_id == "newer"


def test_request_uri_follows_uri_changes() -> None:
    req = register()
    assert isinstance(req.request_uri, SipUri) and req.request_uri.host == "contoso.com"
    req.uri = "sip:fe2.example.com:5061"
    assert isinstance(req.request_uri, SipUri) and req.request_uri.port == 5061
    assert req.start_line() == "REGISTER sip:fe2.example.com:5061 SIP/2.0"


def test_header_injection_is_refused() -> None:
    req = register()
    with pytest.raises(ValueError):
        req.add("X-Evil", "a\r\nVia: SIP/2.0/UDP evil")
    with pytest.raises(ValueError):
        req.set("Subject", "a\nb")


def test_set_body_and_encode() -> None:
    req = register()
    req.set_body(b"hello", "text/plain")
    assert req.get("Content-Length") == "5"
    assert req.content_type == "text/plain"
    data = req.encode()
    assert data.endswith(b"\r\n\r\nhello")
    again = parse_message(data)
    assert again == req
    assert again.body == b"hello"
    assert bytes(req) == data


def test_equality() -> None:
    a, b = register(), register()
    assert a == b
    assert a != Response(200)
    b.set("Expires", "60")
    assert a != b
    assert Request("OPTIONS", "sip:h") == Request("OPTIONS", "sip:h")
    assert Request("OPTIONS", "sip:h") != Request("OPTIONS", "sip:g")
    with pytest.raises(TypeError):
        hash(a)


def test_copy_is_independent() -> None:
    req = register()
    other = req.copy()
    assert other == req
    other.set("Max-Forwards", "1")
    assert req.max_forwards == 70
    resp = make_response(req, 200)
    copy = resp.copy()
    assert copy == resp and copy is not resp


def test_empty_message_encodes() -> None:
    assert Request("OPTIONS", "sip:h").encode() == b"OPTIONS sip:h SIP/2.0\r\n\r\n"
    assert isinstance(Message().headers, list)


# ------------------------------------------------------------------------ make_response


def test_make_response_copies_headers_and_adds_to_tag() -> None:
    data = crlf(
        "INVITE sip:bob@biloxi.com SIP/2.0\n"
        "Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\n"
        "Via: SIP/2.0/UDP proxy.atlanta.com;branch=z9hG4bK2, SIP/2.0/UDP p2;branch=z9hG4bK3\n"
        "Max-Forwards: 70\n"
        "Record-Route: <sip:proxy.atlanta.com;lr>\n"
        "To: Bob <sip:bob@biloxi.com>\n"
        "From: Alice <sip:alice@atlanta.com>;tag=1928301774\n"
        "Call-ID: a84b4c76e66710@pc33.atlanta.com\n"
        "CSeq: 314159 INVITE\n"
        "Contact: <sip:alice@pc33.atlanta.com>\n"
        "Content-Type: application/sdp\n"
        "Content-Length: 4\n\nv=0\n"
    )
    req = parse_message(data)
    assert isinstance(req, Request)
    resp = make_response(req, 486, to_tag="a6c85cf")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert [k for k, _, _ in resp.headers] == [
        "via", "via", "to", "from", "call-id", "cseq", "content-length",
    ]
    assert resp.get_all("Via") == req.get_all("Via")
    assert resp.to.tag == "a6c85cf"
    assert resp.get("To") == "Bob <sip:bob@biloxi.com>;tag=a6c85cf"
    assert resp.from_ == req.from_
    assert resp.call_id == req.call_id
    assert resp.cseq == req.cseq
    assert resp.get("Content-Length") == "0"
    assert resp.body == b""
    assert "Record-Route" not in resp and "Contact" not in resp
    validate_response(resp)
    again = parse_message(resp.encode())
    assert again == resp
    # The request is untouched.
    assert req.to.tag is None


def test_make_response_keeps_an_existing_to_tag() -> None:
    req = _req("To: <sip:b@h>;tag=existing")
    resp = make_response(req, 200, "Fine", to_tag="new")
    assert resp.to.tag == "existing"
    assert resp.reason == "Fine"
    no_tag = make_response(_req(), 100)
    assert no_tag.to.tag is None
    assert no_tag.reason == "Trying"


# -------------------------------------------------------------------------- helpers, errors


def test_helpers() -> None:
    from sipstack.message import check_call_id, parse_contacts, parse_vias

    assert check_call_id("a84b4c76e66710@pc33.atlanta.com") == "a84b4c76e66710@pc33.atlanta.com"
    for bad in ("", "a b", "a,b", "a\x00b", "a\tb"):
        with pytest.raises(SipParseError):
            check_call_id(bad)
    vias = parse_vias(["SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b", "SIP/2.0/TCP c"])
    assert [v.host for v in vias] == ["a", "b", "c"]
    assert parse_vias([]) == []
    contacts = parse_contacts(['"x, y" <sip:a@b>, <sip:c@d>;q=0.1', "*"])
    assert [c.wildcard for c in contacts] == [False, False, True]
    assert contacts[0].display_name == "x, y"


def test_cseq_is_an_immutable_named_tuple() -> None:
    cseq = CSeq(7, "INVITE")
    number, method = cseq
    assert (number, method) == (7, "INVITE")
    assert str(cseq) == "7 INVITE"
    assert hash(cseq) == hash(CSeq(7, "INVITE"))
    with pytest.raises(AttributeError):
        cseq.number = 8  # type: ignore[misc]


def test_sip_parse_error() -> None:
    exc = SipParseError("bad\r\nthing\x00", 505)
    assert exc.reason == "bad??thing?"
    assert exc.status == 505
    assert repr(exc) == "SipParseError('bad??thing?', status=505)"
    assert isinstance(exc, ValueError)
    assert SipParseError("x").status == 400


def test_validated_request_get_and_contains_follow_header_edits() -> None:
    """validate_request caches the first value of each header name; edits drop or update it."""
    raw = (
        b"REGISTER sip:example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa\r\n"
        b"Via: SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bKb\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n"
        b"Call-ID: c1\r\nCSeq: 1 REGISTER\r\nUser-Agent: one\r\nUser-Agent: two\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    req = parse_message(raw)
    assert isinstance(req, Request)
    validate_request(req)
    assert req.get("user-agent") == "one"  # the first field of the name
    assert req.get("Via") == "SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bKa"
    assert "supported" not in req and "user-agent" in req
    req.add("Supported", "path")
    assert "supported" in req and req.get("supported") == "path"
    req.remove("User-Agent")
    assert req.get("user-agent") is None
    assert req.from_.tag == "1"  # parsed on demand (validation only checked it)
