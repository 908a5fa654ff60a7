"""``application/reginfo+xml`` (RFC 3680 §5): build, parse, round trip, and hostile input."""

from __future__ import annotations

import pytest

from sipstack.errors import SipParseError
from sipstack.reginfo import (
    CONTENT_TYPE,
    MAX_DOCUMENT_SIZE,
    REGINFO_NS,
    ContactInfo,
    RegInfo,
    Registration,
    parse_reginfo,
)

# RFC 3680 §5.4, as printed (two contacts, one terminated, xsi namespace declared).
RFC3680_5_4 = b"""<?xml version="1.0"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         version="0" state="full">
  <registration aor="sip:user@example.com" id="as9"
                state="active">
    <contact id="76" state="active" event="registered"
             duration-registered="7322"
             q="0.8">
      <uri>sip:user@pc887.example.com</uri>
    </contact>
    <contact id="77" state="terminated" event="expired"
             duration-registered="3600"
             q="0.5">
      <uri>sip:user@university.edu</uri>
    </contact>
  </registration>
</reginfo>
"""

# RFC 3680 §6 call flow: the first NOTIFY (no contact yet) and the one after a REGISTER.
RFC3680_6_F4 = b"""<?xml version="1.0"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
             version="0" state="full">
  <registration aor="sip:joe@example.com" id="a7" state="init" />
</reginfo>
"""
RFC3680_6_F8 = b"""<?xml version="1.0"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
             version="1" state="partial">
  <registration aor="sip:joe@example.com" id="a7" state="active">
    <contact id="76" state="active" event="registered"
             duration-registered="0">
      <uri>sip:joe@pc34.example.com</uri>
    </contact>
  </registration>
</reginfo>
"""

# RFC 5628 §4 style: the instance id travels as an unknown-param, quoted; plus extensions.
WITH_EXTENSIONS = b"""<?xml version="1.0" encoding="UTF-8"?>
<reginfo xmlns="urn:ietf:params:xml:ns:reginfo"
         xmlns:gr="urn:ietf:params:xml:ns:gruuinfo" version="4" state="partial">
  <registration aor="sip:callee@example.com" id="a1" state="active">
    <contact id="9" state="active" event="created" expires="3600" callid="abc@h" cseq="7">
      <uri>sip:callee@192.0.2.2;transport=tcp</uri>
      <display-name xml:lang="en">Callee &amp; Co</display-name>
      <unknown-param name="+sip.instance"
        >"&lt;urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6&gt;"</unknown-param>
      <unknown-param name="reg-id">2</unknown-param>
      <unknown-param name="audio"></unknown-param>
      <gr:pub-gruu uri="sip:callee@example.com;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"/>
      <gr:temp-gruu uri="sip:tgruu.7hs==jd7vnzga5w7fajsc7-ajd6fabz0f8g5@example.com;gr"
                    first-cseq="1"/>
    </contact>
    <foreign xmlns="urn:example:other"><x/></foreign>
  </registration>
</reginfo>
"""


def sample() -> RegInfo:
    return RegInfo(
        version=12,
        state="partial",
        registrations=[
            Registration(
                aor="sip:alice@contoso.com",
                id="r-1",
                state="active",
                contacts=[
                    ContactInfo(
                        id="c1",
                        state="active",
                        event="created",
                        uri="sip:alice@192.0.2.1:5060;transport=tcp",
                        expires=3599,
                        q=0.5,
                        callid="a84b4c76e66710@pc33",
                        cseq=314159,
                        instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>",
                        reg_id=1,
                        duration_registered=0,
                    ),
                    ContactInfo(
                        id="c2",
                        state="terminated",
                        event="deactivated",
                        uri="sip:alice@[2001:db8::1]:5061;transport=tls",
                        expires=0,
                    ),
                ],
            ),
            Registration(aor="sip:bob@contoso.com", id="r-2", state="init"),
        ],
    )


def test_round_trip() -> None:
    doc = sample()
    data = doc.to_xml()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert f'xmlns="{REGINFO_NS}"'.encode() in data
    assert parse_reginfo(data) == doc


def test_serialised_form() -> None:
    """Attributes and children as RFC 3680 §5.3 names them; instance quoted (RFC 5628 §4)."""
    text = sample().to_xml().decode()
    assert 'version="12" state="partial"' in text
    assert '<registration aor="sip:alice@contoso.com" id="r-1" state="active">' in text
    assert 'id="c1" state="active" event="created"' in text
    assert 'expires="3599"' in text and 'q="0.5"' in text and 'cseq="314159"' in text
    assert 'callid="a84b4c76e66710@pc33"' in text
    assert "<uri>sip:alice@192.0.2.1:5060;transport=tcp</uri>" in text
    assert (
        '<unknown-param name="+sip.instance">'
        '"&lt;urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF&gt;"</unknown-param>'
    ) in text
    assert '<unknown-param name="reg-id">1</unknown-param>' in text
    assert 'state="terminated" event="deactivated"' in text
    assert '<registration aor="sip:bob@contoso.com" id="r-2" state="init"/>' in text
    assert CONTENT_TYPE == "application/reginfo+xml"


def test_escaping_round_trip() -> None:
    """Markup characters, quotes, whitespace controls and non-ASCII survive; characters XML
    cannot carry become U+FFFD."""
    nasty = "a&b<c>d\"e'f\tg]]>h é 漢 \U0001f600"
    doc = RegInfo(
        0,
        "full",
        [
            Registration(
                aor=f"sip:{nasty}@x",
                id=nasty,
                state="active",
                contacts=[
                    ContactInfo(
                        id=nasty,
                        state="active",
                        event="registered",
                        uri=f"sip:{nasty}@h",
                        callid=nasty,
                        display_name=nasty,
                        unknown_params=[(nasty, nasty)],
                    )
                ],
            )
        ],
    )
    assert parse_reginfo(doc.to_xml()) == doc
    doc.registrations[0].contacts[0].callid = "bad\x00\x07\udcffx"
    parsed = parse_reginfo(doc.to_xml())
    assert parsed.registrations[0].contacts[0].callid == "bad\ufffd\ufffd\ufffdx"


def test_rfc3680_5_4_example() -> None:
    info = parse_reginfo(RFC3680_5_4)
    assert (info.version, info.state) == (0, "full")
    (reg,) = info.registrations
    assert (reg.aor, reg.id, reg.state) == ("sip:user@example.com", "as9", "active")
    first, second = reg.contacts
    assert (first.id, first.state, first.event) == ("76", "active", "registered")
    assert first.duration_registered == 7322 and first.q == 0.8
    assert first.uri == "sip:user@pc887.example.com"
    assert (second.id, second.state, second.event) == ("77", "terminated", "expired")
    assert second.uri == "sip:user@university.edu" and second.q == 0.5


def test_rfc3680_6_call_flow_examples() -> None:
    first = parse_reginfo(RFC3680_6_F4)
    assert (first.version, first.state) == (0, "full")
    assert first.registrations == [Registration("sip:joe@example.com", "a7", "init", [])]
    second = parse_reginfo(RFC3680_6_F8)
    assert (second.version, second.state) == (1, "partial")
    (contact,) = second.registrations[0].contacts
    assert contact.uri == "sip:joe@pc34.example.com"
    assert contact.duration_registered == 0
    assert second.registrations[0].state == "active"


def test_extensions_and_foreign_elements() -> None:
    """RFC 5628 instance/reg-id unknown-params are decoded; other namespaces are ignored."""
    info = parse_reginfo(WITH_EXTENSIONS)
    (reg,) = info.registrations
    (c,) = reg.contacts
    assert c.instance == "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"
    assert c.reg_id == 2
    assert c.unknown_params == [("audio", "")]
    assert c.display_name == "Callee & Co"
    assert (c.expires, c.callid, c.cseq) == (3600, "abc@h", 7)
    assert c.uri == "sip:callee@192.0.2.2;transport=tcp"


def test_other_encodings() -> None:
    doc = sample()
    text = doc.to_xml().decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    assert parse_reginfo(text.encode("utf-16")) == doc


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not xml at all",
        b"<reginfo",
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full"></reginfox>',
        b"\xff\xfe\x00garbage",
        # wrong root, wrong namespace
        b'<foo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full"/>',
        b'<reginfo version="0" state="full"/>',
        b'<reginfo xmlns="urn:example" version="0" state="full"/>',
        # required attributes and enumerations
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" state="full"/>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="-1" state="full"/>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="x" state="full"/>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="whole"/>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration id="1" state="active"/></reginfo>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="gone"/></reginfo>',
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="active">'
        b'<contact id="1" state="active" event="exploded"><uri>sip:x@y</uri></contact>'
        b"</registration></reginfo>",
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="active">'
        b'<contact id="1" state="active" event="created"></contact>'
        b"</registration></reginfo>",
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="active">'
        b'<contact id="1" state="active" event="created" expires="soon"><uri>sip:x@y</uri>'
        b"</contact></registration></reginfo>",
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="active">'
        b'<contact id="1" state="active" event="created" q="high"><uri>sip:x@y</uri>'
        b"</contact></registration></reginfo>",
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="sip:a@b" id="1" state="active">'
        b'<contact id="1" state="active" event="created" q="7"><uri>sip:x@y</uri>'
        b"</contact></registration></reginfo>",
    ],
)
def test_malformed_is_400(data: bytes) -> None:
    with pytest.raises(SipParseError) as err:
        parse_reginfo(data)
    assert err.value.status == 400


def test_doctype_and_entities_rejected() -> None:
    """No DOCTYPE at all: no entity expansion (billion laughs), no external entities."""
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="&lol2;" id="1" state="init"/></reginfo>'
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        b'<registration aor="&x;" id="1" state="init"/></reginfo>'
    )
    plain = (
        b"<!DOCTYPE reginfo>"
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full"/>'
    )
    for data in (laughs, external, plain):
        with pytest.raises(SipParseError, match="DOCTYPE"):
            parse_reginfo(data)


def test_size_and_depth_limits() -> None:
    big = b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
    big += b" " * MAX_DOCUMENT_SIZE + b"</reginfo>"
    with pytest.raises(SipParseError, match="larger"):
        parse_reginfo(big)
    deep = (
        b'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="0" state="full">'
        + b"<x>" * 100
        + b"</x>" * 100
        + b"</reginfo>"
    )
    with pytest.raises(SipParseError, match="deeper"):
        parse_reginfo(deep)


def test_to_xml_rejects_invalid_values() -> None:
    with pytest.raises(ValueError):
        RegInfo(-1, "full").to_xml()
    with pytest.raises(ValueError):
        RegInfo(0, "everything").to_xml()  # type: ignore[arg-type]
    bad_event = RegInfo(
        0,
        "full",
        [Registration("sip:a@b", "1", "active", [ContactInfo("1", "active", "boom", "sip:x")])],  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError):
        bad_event.to_xml()
