"""Property tests (hypothesis) of the parser and the serializer (DESIGN.md §9).

(a) Generated valid requests and responses survive ``encode`` → ``parse_message`` unchanged,
    validate, and re-encode to the same bytes; their typed views give back what was generated.
(b) Arbitrary bytes, and valid messages with bytes inserted, deleted or replaced, make
    ``parse_message`` and the validators raise nothing but :class:`SipParseError`; whatever
    parses re-encodes to bytes that parse to an equal message.
(c) URIs round-trip through ``str`` and :func:`parse_uri`; the fast paths agree with the
    reference parsers.
"""

from __future__ import annotations

import ipaddress
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipstack import headers as headers_mod
from sipstack import uri as uri_mod
from sipstack.errors import SipParseError
from sipstack.headers import CSeq, NameAddr, Via, format_params, parse_params
from sipstack.message import Message, Request, Response
from sipstack.parser import parse_message, validate_request, validate_response
from sipstack.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MESSAGE_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FUZZ_SETTINGS = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ALNUM = string.ascii_letters + string.digits
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
MARK = "-_.!~*'()"
USER_CHARS = ALNUM + MARK + "&=+$,;?/"
PASSWORD_CHARS = ALNUM + MARK + "&=+$,"
PARAM_CHARS = ALNUM + MARK + "[]/:&+$"
HNV_CHARS = ALNUM + MARK + "[]/?:+$"
GEN_VALUE_CHARS = TOKEN_CHARS + "[]:"

# ------------------------------------------------------------------------ URI strategies

escaped = st.integers(0, 255).map(lambda b: f"%{b:02X}" if b % 2 else f"%{b:02x}")


def escapable(chars: str, min_size: int = 1, max_size: int = 10) -> st.SearchStrategy[str]:
    """Strings of ``chars`` and ``%HH`` escapes."""
    return st.lists(st.sampled_from(chars) | escaped, min_size=min_size, max_size=max_size).map(
        "".join
    )


token = st.text(TOKEN_CHARS, min_size=1, max_size=10)
label = st.builds(
    lambda first, middle, last: first + middle + last if middle or last else first,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "-", max_size=5),
    st.sampled_from(ALNUM),
)
hostname = st.builds(
    lambda labels, dot: ".".join(labels) + dot,
    st.lists(label, min_size=1, max_size=4),
    st.sampled_from(["", "", "", "."]),
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")
host = st.one_of(hostname, ipv4, ipv6)
port = st.none() | st.integers(0, 65535)
uri_params = st.dictionaries(
    escapable(PARAM_CHARS, max_size=8),
    st.none() | escapable(PARAM_CHARS, max_size=8),
    max_size=4,
)
uri_headers = st.lists(
    st.tuples(escapable(HNV_CHARS, max_size=6), escapable(HNV_CHARS, min_size=0, max_size=6)),
    max_size=3,
)


@st.composite
def sip_uris(draw: st.DrawFn, with_headers: bool = True) -> SipUri:
    """Any SIP/SIPS URI of RFC 3261 §25.1."""
    user = draw(st.none() | escapable(USER_CHARS))
    password = None
    if user is not None:
        password = draw(st.none() | escapable(PASSWORD_CHARS, min_size=0))
    return SipUri(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        password,
        draw(host),
        draw(port),
        draw(uri_params),
        draw(uri_headers) if with_headers else [],
    )


tel_uris = st.builds(
    TelUri,
    st.from_regex(r"\+?[0-9][0-9\-.()]{0,12}", fullmatch=True),
    st.dictionaries(
        st.text(ALNUM + "-", min_size=1, max_size=6),
        st.none() | st.text(PARAM_CHARS, min_size=1, max_size=6),
        max_size=3,
    ),
)
absolute_uris = st.builds(
    AbsoluteUri,
    st.from_regex(r"[A-Za-z][A-Za-z0-9+\-.]{0,8}", fullmatch=True).filter(
        lambda s: s.lower() not in ("sip", "sips", "tel")
    ),
    st.text(ALNUM + "/:@?=&;.-_~%+", min_size=1, max_size=20),
)
any_uri: st.SearchStrategy[Uri] = st.one_of(sip_uris(), tel_uris, absolute_uris)

# ------------------------------------------------------------------- header strategies

quoted_content = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from('"\\\t'), max_size=12
)


def quote(text: str) -> str:
    """A quoted-string holding ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


gen_value = st.text(GEN_VALUE_CHARS, min_size=1, max_size=10) | quoted_content.map(quote)
lower_token = token.map(str.lower)
header_params = st.dictionaries(lower_token, st.none() | gen_value, max_size=3)
tag = st.text(TOKEN_CHARS, min_size=1, max_size=12)


@st.composite
def name_addrs(draw: st.DrawFn, tagged: bool | None = None) -> NameAddr:
    """A From/To/Contact value with optional display name and header parameters."""
    params = draw(header_params)
    if tagged is True:
        params["tag"] = draw(tag)
    elif tagged is False:
        params.pop("tag", None)
    display = draw(st.none() | quoted_content)
    uri = draw(st.one_of(sip_uris(), tel_uris, absolute_uris))
    return NameAddr(uri, display, params)


@st.composite
def contacts(draw: st.DrawFn) -> NameAddr:
    """A Contact value with valid registration parameters."""
    na = draw(name_addrs())
    for name in ("expires", "q", "reg-id", "+sip.instance"):
        na.params.pop(name, None)
    if draw(st.booleans()):
        na.params["expires"] = str(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        na.params["q"] = draw(st.from_regex(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", fullmatch=True))
    if draw(st.booleans()):
        na.params["+sip.instance"] = quote(f"<urn:uuid:{draw(st.uuids())}>")
        na.params["reg-id"] = str(draw(st.integers(1, 2**31 - 1)))
    return na


@st.composite
def vias(draw: st.DrawFn) -> Via:
    """A Via with a branch and optional received/rport/ttl/extension parameters."""
    params: dict[str, str | None] = {"branch": "z9hG4bK" + draw(token)}
    if draw(st.booleans()):
        params["received"] = draw(ipv4 | ipv6.map(lambda h: h[1:-1]))
    if draw(st.booleans()):
        params["rport"] = draw(st.none() | st.integers(0, 65535).map(str))
    if draw(st.booleans()):
        params["ttl"] = str(draw(st.integers(0, 255)))
    for name, value in draw(header_params).items():
        if name not in ("rport", "ttl"):
            params.setdefault(name, value)
    return Via(
        draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"]) | token.map(str.upper)),
        draw(host),
        draw(port),
        params,
    )


call_id = st.builds(
    lambda a, b: a if b is None else f"{a}@{b}",
    st.text(ALNUM + "-.!%*_+`'~()<>:\\\"/[]?{}", min_size=1, max_size=20),
    st.none() | st.text(ALNUM + "-.", min_size=1, max_size=15),
)
method = st.sampled_from(
    ["REGISTER", "INVITE", "OPTIONS", "ACK", "BYE", "CANCEL", "SUBSCRIBE", "NOTIFY", "PUBLISH"]
) | token
safe_value = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"),
    min_size=0,
    max_size=30,
).filter(lambda v: v == v.strip())
SPECIAL_KEYS = {
    "via", "from", "to", "call-id", "cseq", "max-forwards", "content-length", "contact",
    "expires", "content-type", *headers_mod.COMPACT_FORMS, *headers_mod.COMPACT_FORMS.values(),
}
extension_name = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in SPECIAL_KEYS
).map(lambda n: "X-" + n)


@st.composite
def messages(draw: st.DrawFn) -> tuple[Message, dict[str, object]]:
    """A valid request or response, and the typed values it was built from."""
    cseq = CSeq(draw(st.integers(0, 2**31 - 1)), draw(method))
    msg: Message
    if draw(st.booleans()):
        msg = Request(cseq.method, str(draw(sip_uris(with_headers=False))))
    else:
        reason = draw(safe_value.filter(lambda r: "\x85" not in r))
        msg = Response(draw(st.integers(100, 699)), reason)
    via_list = draw(st.lists(vias(), min_size=1, max_size=3))
    if draw(st.booleans()):
        msg.add("Via", ", ".join(str(v) for v in via_list))
    else:
        for via in via_list:
            msg.add("Via", str(via))
    max_forwards = draw(st.none() | st.integers(0, 255))
    if max_forwards is not None:
        msg.add("Max-Forwards", str(max_forwards))
    from_ = draw(name_addrs(tagged=True))
    to = draw(name_addrs())
    msg.add("From", str(from_))
    msg.add("To", str(to))
    cid = draw(call_id)
    msg.add("Call-ID", cid)
    msg.add("CSeq", str(cseq))
    contact_list = draw(st.lists(contacts(), max_size=3))
    if contact_list and draw(st.booleans()):
        msg.add("Contact", ", ".join(str(c) for c in contact_list))
    else:
        for contact in contact_list:
            msg.add("Contact", str(contact))
    expires = draw(st.none() | st.integers(0, 2**32 - 1))
    if expires is not None:
        msg.add("Expires", str(expires))
    for name, value in draw(st.lists(st.tuples(extension_name, safe_value), max_size=4)):
        msg.add(name, value)
    body = draw(st.binary(max_size=64))
    if body:
        msg.set_body(body, "application/octet-stream")
    else:
        msg.set("Content-Length", "0")
    expected = {
        "vias": via_list,
        "from_": from_,
        "to": to,
        "call_id": cid,
        "cseq": cseq,
        "max_forwards": max_forwards,
        "contacts": contact_list,
        "expires": expires,
        "body": body,
    }
    return msg, expected


def check(msg: Message) -> None:
    """Run the validator that fits ``msg``."""
    if isinstance(msg, Request):
        validate_request(msg)
    else:
        assert isinstance(msg, Response)
        validate_response(msg)


# ------------------------------------------------------------------------ (a) round trip


@MESSAGE_SETTINGS
@given(messages(), st.integers(0, 3))
def test_generated_messages_round_trip(
    case: tuple[Message, dict[str, object]], crlfs: int
) -> None:
    msg, expected = case
    check(msg)
    data = msg.encode()
    parsed = parse_message(data)
    assert parsed == msg
    check(parsed)
    assert parsed.encode() == data
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    # Leading CRLFs (keep-alives, RFC 3261 §7.5) and octets after the body are ignored.
    noisy = b"\r\n" * crlfs + data + b"trailing junk"
    assert parse_message(noisy, datagram=True) == msg


# -------------------------------------------------------------------------- (b) fuzzing


def must_not_crash(data: bytes, datagram: bool) -> None:
    """Parse and validate; only SipParseError may escape; re-encoding is stable."""
    try:
        msg = parse_message(data, datagram=datagram)
    except SipParseError as exc:
        assert exc.status in (400, 505)
        return
    again = parse_message(msg.encode(), datagram=datagram)
    assert again == msg
    assert again.encode() == msg.encode()
    try:
        check(msg)
    except SipParseError as exc:
        assert exc.status == 400
        return
    # Every typed view a service uses is now safe to read.
    msg.vias, msg.from_, msg.to, msg.call_id, msg.cseq  # noqa: B018
    if isinstance(msg, Request):
        msg.contacts, msg.expires, msg.max_forwards, msg.request_uri  # noqa: B018


@FUZZ_SETTINGS
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes(data: bytes, datagram: bool) -> None:
    must_not_crash(data, datagram)


@FUZZ_SETTINGS
@given(
    st.sampled_from(
        [b"", b"SIP/2.0 200 OK\r\n", b"INVITE sip:a@b SIP/2.0\r\n", b"OPTIONS sip:h SIP/2.0\r\n"]
    ),
    st.lists(
        st.sampled_from(
            [b"Via: ", b"v: SIP/2.0/UDP h;branch=z9hG4bK", b"From: ", b"To: ", b"Call-ID: ",
             b"CSeq: 1 INVITE", b"Contact: ", b"l: ", b"Content-Length: 0", b"\r\n", b"\n",
             b"\r", b" ", b"\t", b";", b",", b"<", b">", b'"', b"\\", b"sip:", b"@", b":", b"=",
             b"%", b"[", b"]", b"*", b"0", b"9", b"\xff", b"\xc3\xa9", b"tag=x", b"\r\n\r\n"]
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_sip_shaped_noise(start: bytes, pieces: list[bytes], datagram: bool) -> None:
    must_not_crash(start + b"".join(pieces), datagram)


def _seed_messages() -> list[bytes]:
    """Valid messages to mutate: a few typical ones and the valid RFC 4475 messages."""
    seeds = [
        (
            b"REGISTER sip:contoso.com SIP/2.0\r\n"
            b"Via: SIP/2.0/TLS 192.0.2.15:49152;branch=z9hG4bK776asdhds;rport\r\n"
            b"Max-Forwards: 70\r\nTo: \"Alice\" <sip:alice@contoso.com>\r\n"
            b"From: \"Alice\" <sip:alice@contoso.com>;tag=1928301774\r\n"
            b"Call-ID: a84b4c76e66710@pc33.contoso.com\r\nCSeq: 314159 REGISTER\r\n"
            b"Contact: <sip:alice@192.0.2.15:49152;transport=tls;ob>"
            b';+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1\r\n'
            b"Expires: 3600\r\nSupported: path, outbound\r\nContent-Length: 0\r\n\r\n"
        ),
        (
            b"SIP/2.0 200 OK\r\n"
            b"v: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP [2001:db8::1]:5070"
            b";branch=z9hG4bK2;received=192.0.2.2\r\n"
            b"f: <sip:a@example.com>;tag=1\r\nt: <sip:b@example.com>;tag=2\r\n"
            b"i: x\r\nCSeq: 1 INVITE\r\nm: *\r\nl: 4\r\n\r\nbody"
        ),
    ]
    corpus = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "rfc4475"
    if corpus.is_dir():
        seeds.extend(p.read_bytes() for p in sorted(corpus.glob("*.dat")))
    return seeds


SEEDS = _seed_messages()


@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[bytes]) -> bytes:
    """A message with a few bytes inserted, deleted or replaced."""
    data = bytearray(draw(seeds))
    special = st.sampled_from(list(b"\r\n \t:;,<>\"\\@%=*?[]/0\xff"))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "insert":
            one = special.map(lambda b: bytes([b]))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3) | one)
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
        elif data:
            data[pos] = draw(st.integers(0, 255) | special)
    return bytes(data)


@FUZZ_SETTINGS
@given(mutated(st.sampled_from(SEEDS)), st.booleans())
def test_mutated_seed_messages(data: bytes, datagram: bool) -> None:
    must_not_crash(data, datagram)


@MESSAGE_SETTINGS
@given(mutated(messages().map(lambda case: case[0].encode())), st.booleans())
def test_mutated_generated_messages(data: bytes, datagram: bool) -> None:
    must_not_crash(data, datagram)


# ------------------------------------------------------------------------------- (c) URIs


@SETTINGS
@given(any_uri)
def test_uri_round_trip(uri: Uri) -> None:
    text = str(uri)
    parsed = parse_uri(text)
    assert parsed == uri
    assert str(parsed) == text
    assert parsed.equivalent(uri)


@SETTINGS
@given(sip_uris())
def test_uri_fast_path_agrees_with_reference(uri: SipUri) -> None:
    text = str(uri)
    reference = uri_mod._parse_sip(uri.scheme, text.partition(":")[2])
    assert parse_uri(text) == reference


@SETTINGS
@given(st.text(USER_CHARS + PARAM_CHARS + "@:%[]?&=<> \"", max_size=30))
def test_uri_noise_fast_path_agrees_with_reference(rest: str) -> None:
    text = "sip:" + rest
    try:
        expected: object = uri_mod._parse_sip("sip", rest)
    except SipParseError:
        expected = SipParseError
    try:
        got: object = parse_uri(text)
    except SipParseError:
        got = SipParseError
    assert got == expected


@SETTINGS
@given(header_params, st.sampled_from(["", " ", "  ", "\t"]))
def test_params_round_trip(params: dict[str, str | None], lws: str) -> None:
    text = format_params(params)
    assert parse_params(text) == params
    spaced = "".join(
        f"{lws};{lws}{k}" if v is None else f"{lws};{lws}{k}{lws}={lws}{v}"
        for k, v in params.items()
    )
    assert parse_params(spaced) == params
    assert headers_mod._parse_params_slow(spaced) == params


@SETTINGS
@given(st.text(TOKEN_CHARS + GEN_VALUE_CHARS + ';="\\ \t<>,', max_size=40))
def test_params_fast_path_agrees_with_reference(text: str) -> None:
    try:
        expected: object = headers_mod._parse_params_slow(text)
    except SipParseError:
        expected = SipParseError
    try:
        got: object = parse_params(text)
    except SipParseError:
        got = SipParseError
    assert got == expected


@MESSAGE_SETTINGS
@given(st.lists(name_addrs(), min_size=1, max_size=4))
def test_split_commas_on_name_addr_lists(values: list[NameAddr]) -> None:
    text = ", ".join(str(v) for v in values)
    assert headers_mod.split_commas(text) == [str(v) for v in values]
    assert [headers_mod.parse_name_addr(v) for v in headers_mod.split_commas(text)] == values


@SETTINGS
@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert headers_mod.parse_via(str(via)) == via


def _result_or_error(parse: object, text: str) -> object:
    try:
        return parse(text)  # type: ignore[operator]
    except SipParseError:
        return SipParseError


@SETTINGS
@given(
    st.one_of(sip_uris(with_headers=False).map(str), st.text(USER_CHARS + ":@;=.>", max_size=25)),
    st.sampled_from(["", ";tag=", ";tag=a-1.b", ";tag=x;y", ";TAG=z", ";tag=a b", "x", ">"]),
)
def test_name_addr_fast_paths_agree_with_reference(uri_text: str, tail: str) -> None:
    # "<URI>" plus nothing or a tag: parse_name_addr's fastest path (the URI memoised alone)
    # and check_name_addr against the reference parser, twice (the second time from memos).
    text = f"<{uri_text}>{tail}"
    expected = _result_or_error(headers_mod._parse_name_addr_slow, text)
    for _ in range(2):
        got = _result_or_error(headers_mod.parse_name_addr, text)
        assert got == expected
        if isinstance(got, NameAddr):
            assert got.uri_text is None or got.uri_text == str(got.uri)
        checked = _result_or_error(headers_mod.check_name_addr, text)
        assert checked is None or checked == expected


@SETTINGS
@given(vias(), st.sampled_from(["", ";rport", ";rport=5", ";x", ";branch=b"]), st.booleans())
def test_via_fast_path_agrees_with_reference(via: Via, tail: str, bare: bool) -> None:
    # parse_via's memoised fastest path against the general parser, on the forms it takes
    # ("SIP/2.0/T host[:port][;branch=token[;rport]]") and near them.
    text = f"SIP/2.0/{via.transport} {via.sent_by}"
    if not bare:
        text += f";branch={via.branch}{tail}"
    expected = _result_or_error(headers_mod._parse_via_general, text)
    assert _result_or_error(headers_mod.parse_via, text) == expected
    assert _result_or_error(headers_mod.parse_via, text) == expected  # now from the memo


@SETTINGS
@given(
    st.sampled_from(["SIP/2.0/TCP ", "SIP/2.0/UDP", "SIP/2.0/tls ", "SIP/2.0/X "]),
    st.text(TOKEN_CHARS + ":;=[] \t", max_size=30),
)
def test_via_noise_fast_path_agrees_with_reference(head: str, rest: str) -> None:
    text = head + rest
    expected = _result_or_error(headers_mod._parse_via_general, text)
    assert _result_or_error(headers_mod.parse_via, text) == expected
    assert _result_or_error(headers_mod.parse_via, text) == expected


@SETTINGS
@given(st.text(TOKEN_CHARS + ";=,\"@ \t\u00e9", max_size=12))
def test_is_token_agrees_with_the_grammar(text: str) -> None:
    assert headers_mod.is_token(text) == (headers_mod._TOKEN_RE.match(text) is not None)


def test_ipv6_strategy_is_bracketed() -> None:
    assert ipaddress.IPv6Address("2001:db8::1")  # the strategy above relies on str() of this
