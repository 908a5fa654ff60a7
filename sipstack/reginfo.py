"""The ``application/reginfo+xml`` body of the reg event package (RFC 3680 §5), sans-I/O.

A :class:`RegInfo` document describes the registrations of one or more AORs at a registrar:
``<reginfo version state>`` holds ``<registration aor id state>`` elements, each holding
``<contact id state event ...>`` elements with a ``<uri>`` (RFC 3680 §5.3 schema, namespace
:data:`REGINFO_NS`). :meth:`RegInfo.to_xml` serialises one; :func:`parse_reginfo` reads one.

The ``+sip.instance`` and ``reg-id`` Contact parameters (RFC 5626 §4.1, §4.2) travel as
``<unknown-param name="+sip.instance">`` elements (RFC 3680 §5.3, as RFC 5628 §4 shows) and are
exposed as :attr:`ContactInfo.instance` and :attr:`ContactInfo.reg_id`.

Safety of the parser (the body comes from the network): documents larger than
:data:`MAX_DOCUMENT_SIZE` bytes, with a DOCTYPE (hence any entity declaration: no entity
expansion, no external entities), nested deeper than :data:`MAX_DEPTH` elements, or that are not
well-formed are rejected with :class:`~sipstack.errors.SipParseError` (status 400). Expat
itself is used directly (no third-party dependency); elements and attributes of other
namespaces are ignored, as the schema's ``<xs:any namespace="##other">`` allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, cast
from xml.parsers import expat

from .errors import SipParseError

__all__ = [
    "CONTACT_EVENTS",
    "CONTENT_TYPE",
    "MAX_DEPTH",
    "MAX_DOCUMENT_SIZE",
    "REGINFO_NS",
    "ContactEvent",
    "ContactInfo",
    "ContactState",
    "DocumentState",
    "RegInfo",
    "Registration",
    "RegistrationState",
    "parse_reginfo",
]

REGINFO_NS = "urn:ietf:params:xml:ns:reginfo"
"""XML namespace of reginfo documents (RFC 3680 §5.3)."""

CONTENT_TYPE = "application/reginfo+xml"
"""Media type of reginfo documents (RFC 3680 §5.1, §7.1)."""

MAX_DOCUMENT_SIZE = 256 * 1024
"""Largest document :func:`parse_reginfo` accepts, in bytes (a SIP message is at most
64 KiB by default; the margin is for other transports)."""

MAX_DEPTH = 32
"""Deepest element nesting :func:`parse_reginfo` accepts (reginfo itself uses 4)."""

DocumentState = Literal["full", "partial"]
"""``reginfo/@state``: the whole state, or only the changes (RFC 3680 §5.3)."""

RegistrationState = Literal["init", "active", "terminated"]
"""``registration/@state`` (RFC 3680 §5.2 state machine)."""

ContactState = Literal["active", "terminated"]
"""``contact/@state`` (RFC 3680 §5.3)."""

ContactEvent = Literal[
    "registered",
    "created",
    "refreshed",
    "shortened",
    "expired",
    "deactivated",
    "probation",
    "unregistered",
    "rejected",
]
"""``contact/@event``: what moved the contact to its state (RFC 3680 §5.2, §5.3)."""

DOCUMENT_STATES: frozenset[str] = frozenset({"full", "partial"})
REGISTRATION_STATES: frozenset[str] = frozenset({"init", "active", "terminated"})
CONTACT_STATES: frozenset[str] = frozenset({"active", "terminated"})
CONTACT_EVENTS: frozenset[str] = frozenset(
    {
        "registered",
        "created",
        "refreshed",
        "shortened",
        "expired",
        "deactivated",
        "probation",
        "unregistered",
        "rejected",
    }
)
"""Every valid :data:`ContactEvent`."""

_XML_NS = "http://www.w3.org/XML/1998/namespace"
_SEP = "\x1f"  # expat namespace separator: cannot occur in a namespace URI or a name


@dataclass(slots=True)
class ContactInfo:
    """One ``<contact>`` of a registration (RFC 3680 §5.3).

    Attributes:
        id: identifier of the contact, unique within the subscription; stable across
            notifications for the same contact.
        state: ``"active"`` or ``"terminated"``.
        event: the :data:`ContactEvent` that caused the state (``"created"``, ``"expired"`` ...).
        uri: the contact URI (``<uri>``), e.g. ``"sip:alice@192.0.2.1:5060;transport=tcp"``.
        expires: seconds until the binding expires (``@expires``), or ``None``.
        q: the Contact ``q`` value 0.0-1.0 (``@q``), or ``None``.
        callid: Call-ID of the REGISTER that set the binding (``@callid``), or ``None``.
        cseq: CSeq number of that REGISTER (``@cseq``), or ``None``.
        instance: the ``+sip.instance`` value without its double quotes, e.g.
            ``"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"`` (RFC 5626 §4.1), or ``None``.
        reg_id: the ``reg-id`` value (RFC 5626 §4.2), or ``None``.
        duration_registered: seconds since the contact was first registered, or ``None``.
        retry_after: seconds after which a ``probation`` contact may re-register, or ``None``.
        display_name: the ``<display-name>`` text, or ``None``.
        unknown_params: other ``<unknown-param name>`` elements as ``(name, value)`` pairs.
    """

    id: str
    state: ContactState
    event: ContactEvent
    uri: str
    expires: int | None = None
    q: float | None = None
    callid: str | None = None
    cseq: int | None = None
    instance: str | None = None
    reg_id: int | None = None
    duration_registered: int | None = None
    retry_after: int | None = None
    display_name: str | None = None
    unknown_params: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Registration:
    """One ``<registration>``: an AOR and its contacts (RFC 3680 §5.3).

    Attributes:
        aor: the address-of-record URI, e.g. ``"sip:alice@contoso.com"``.
        id: identifier of the registration, unique within the subscription.
        state: ``"init"`` (no contact yet), ``"active"`` (at least one active contact) or
            ``"terminated"`` (the last contact went away).
        contacts: the contacts (all of them in a full document, the changed ones in a
            partial document).
    """

    aor: str
    id: str
    state: RegistrationState
    contacts: list[ContactInfo] = field(default_factory=list)


@dataclass(slots=True)
class RegInfo:
    """A reginfo document (RFC 3680 §5.3).

    Attributes:
        version: per-subscription counter, 0 in the first NOTIFY and +1 in each next one
            (RFC 3680 §5.3: a subscriber detects lost or reordered notifications with it).
        state: ``"full"`` (complete state of every registration listed) or ``"partial"``
            (only what changed since the previous version).
        registrations: the ``<registration>`` elements.
    """

    version: int
    state: DocumentState
    registrations: list[Registration] = field(default_factory=list)

    def to_xml(self) -> bytes:
        """Serialise as UTF-8 XML with an XML declaration.

        Text and attribute values are escaped; characters XML 1.0 cannot carry (most C0
        controls, lone surrogates) become U+FFFD.

        Returns:
            The document bytes (``bytes``).

        Raises:
            ValueError: a negative version or number, or a state/event value outside the
                RFC 3680 enumerations.
        """
        if self.version < 0:
            raise ValueError(f"reginfo version must be >= 0, not {self.version}")
        _check(self.state, DOCUMENT_STATES, "reginfo state")
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            f'<reginfo xmlns="{REGINFO_NS}" version="{self.version}" state="{self.state}">\n',
        ]
        for reg in self.registrations:
            _check(reg.state, REGISTRATION_STATES, "registration state")
            out.append(
                f'  <registration aor="{_attr(reg.aor)}" id="{_attr(reg.id)}" state="{reg.state}"'
            )
            if not reg.contacts:
                out.append("/>\n")
                continue
            out.append(">\n")
            for c in reg.contacts:
                out.append(_contact_xml(c))
            out.append("  </registration>\n")
        out.append("</reginfo>\n")
        return "".join(out).encode("utf-8")


def _check(value: str, allowed: frozenset[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"bad {what} {value!r}; expected one of {sorted(allowed)}")


def _number(value: int | None, what: str) -> str:
    if value is None:
        return ""
    if value < 0:
        raise ValueError(f"contact {what} must be >= 0, not {value}")
    return f' {what}="{value}"'


def _contact_xml(c: ContactInfo) -> str:
    _check(c.state, CONTACT_STATES, "contact state")
    _check(c.event, CONTACT_EVENTS, "contact event")
    attrs = f'id="{_attr(c.id)}" state="{c.state}" event="{c.event}"'
    attrs += _number(c.duration_registered, "duration-registered")
    attrs += _number(c.expires, "expires")
    attrs += _number(c.retry_after, "retry-after")
    if c.q is not None:
        attrs += f' q="{c.q:.3g}"'
    if c.callid is not None:
        attrs += f' callid="{_attr(c.callid)}"'
    attrs += _number(c.cseq, "cseq")
    parts = [f"    <contact {attrs}>\n      <uri>{_text(c.uri)}</uri>\n"]
    if c.display_name is not None:
        parts.append(f"      <display-name>{_text(c.display_name)}</display-name>\n")
    params = list(c.unknown_params)
    if c.instance is not None:
        params.append(("+sip.instance", f'"{c.instance}"'))
    if c.reg_id is not None:
        params.append(("reg-id", str(c.reg_id)))
    for name, value in params:
        parts.append(f'      <unknown-param name="{_attr(name)}">{_text(value)}</unknown-param>\n')
    parts.append("    </contact>\n")
    return "".join(parts)


# XML 1.0 Char production (§2.2): anything else is replaced.
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def _clean(value: str) -> str:
    return _INVALID_XML.sub("\ufffd", value)


def _text(value: str) -> str:
    """Character data: ``& < >`` escaped (``>`` for ``]]>``), invalid characters replaced."""
    return _clean(value).translate(_TEXT_ESCAPES)


def _attr(value: str) -> str:
    """A double-quoted attribute value: also ``"`` and whitespace controls escaped (so that
    attribute-value normalisation, XML 1.0 §3.3.3, gives the value back unchanged)."""
    return _clean(value).translate(_ATTR_ESCAPES)


# ------------------------------------------------------------------------------ parsing


@dataclass(slots=True)
class _Node:
    """A parsed element: namespace, local name, attributes (local name -> value, only those
    without a namespace, plus ``xml:lang`` as ``"xml:lang"``), children and text."""

    ns: str
    name: str
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class _Reject(Exception):
    """Raised from expat handlers to abort the parse."""


def _build(data: bytes) -> _Node:
    """Parse ``data`` into a :class:`_Node` tree with expat (no DOCTYPE allowed)."""
    parser = expat.ParserCreate(namespace_separator=_SEP)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    roots: list[_Node] = []

    def split(qname: str) -> tuple[str, str]:
        ns, sep, local = qname.rpartition(_SEP)
        return (ns, local) if sep else ("", qname)

    def start(qname: str, attributes: dict[str, str]) -> None:
        if len(stack) >= MAX_DEPTH:
            raise _Reject(f"elements nested deeper than {MAX_DEPTH}")
        ns, local = split(qname)
        attrs: dict[str, str] = {}
        for key, value in attributes.items():
            ans, alocal = split(key)
            if not ans:
                attrs[alocal] = value
            elif ans == _XML_NS:
                attrs["xml:" + alocal] = value
        node = _Node(ns, local, attrs)
        if stack:
            stack[-1].children.append(node)
        else:
            roots.append(node)
        stack.append(node)

    def end(qname: str) -> None:
        stack.pop()

    def chars(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    def doctype(*args: object) -> None:
        raise _Reject("DOCTYPE not allowed")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(data, True)
    except _Reject as exc:
        raise SipParseError(f"reginfo: {exc}") from None
    except expat.ExpatError as exc:
        raise SipParseError(
            f"reginfo: malformed XML ({expat.errors.messages[exc.code]}, line {exc.lineno})"
        ) from None
    except (ValueError, UnicodeError) as exc:
        raise SipParseError(f"reginfo: malformed XML ({exc})") from None
    if len(roots) != 1:
        raise SipParseError("reginfo: no root element")
    return roots[0]


def _required(node: _Node, name: str) -> str:
    value = node.attrs.get(name)
    if value is None:
        raise SipParseError(f"reginfo: <{node.name}> without the {name} attribute")
    return value


def _enum(node: _Node, name: str, allowed: frozenset[str]) -> str:
    value = _required(node, name).strip()
    if value not in allowed:
        raise SipParseError(f"reginfo: <{node.name}> {name}={value[:40]!r} is not allowed")
    return value


def _uint(node: _Node, name: str, *, required: bool = False) -> int | None:
    value = node.attrs.get(name)
    if value is None:
        if required:
            raise SipParseError(f"reginfo: <{node.name}> without the {name} attribute")
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise SipParseError(f"reginfo: <{node.name}> {name}={value[:40]!r} is not a number")
    return int(value)


def _text_of(node: _Node) -> str:
    return "".join(node.text).strip()


def _parse_contact(node: _Node) -> ContactInfo:
    contact = ContactInfo(
        id=_required(node, "id"),
        state=cast(ContactState, _enum(node, "state", CONTACT_STATES)),
        event=cast(ContactEvent, _enum(node, "event", CONTACT_EVENTS)),
        uri="",
        expires=_uint(node, "expires"),
        callid=node.attrs.get("callid"),
        cseq=_uint(node, "cseq"),
        duration_registered=_uint(node, "duration-registered"),
        retry_after=_uint(node, "retry-after"),
    )
    q = node.attrs.get("q")
    if q is not None:
        try:
            contact.q = float(q)
        except ValueError:
            raise SipParseError(f"reginfo: <contact> q={q[:40]!r} is not a number") from None
        if not 0.0 <= contact.q <= 1.0:
            raise SipParseError(f"reginfo: <contact> q={q[:40]!r} is out of range")
    uri: str | None = None
    for child in node.children:
        if child.ns != REGINFO_NS:
            continue
        if child.name == "uri":
            uri = _text_of(child)
        elif child.name == "display-name":
            contact.display_name = _text_of(child)
        elif child.name == "unknown-param":
            name = _required(child, "name")
            value = _text_of(child)
            if name.lower() == "+sip.instance":
                if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                    value = value[1:-1]
                contact.instance = value
            elif name.lower() == "reg-id" and value.isascii() and value.isdigit():
                contact.reg_id = int(value)
            else:
                contact.unknown_params.append((name, value))
    if not uri:
        raise SipParseError("reginfo: <contact> without <uri>")
    contact.uri = uri
    return contact


def parse_reginfo(data: bytes) -> RegInfo:
    """Parse an ``application/reginfo+xml`` document (RFC 3680 §5.3).

    Args:
        data: the body bytes (any encoding its XML declaration names; UTF-8 by default).

    Returns:
        The :class:`RegInfo`. Unknown elements and attributes, and those of other namespaces,
        are ignored; ``<unknown-param>`` elements other than ``+sip.instance`` and ``reg-id``
        are kept in :attr:`ContactInfo.unknown_params`.

    Raises:
        SipParseError: (status 400) larger than :data:`MAX_DOCUMENT_SIZE`, not well-formed,
            a DOCTYPE, nesting deeper than :data:`MAX_DEPTH`, a root other than
            ``{urn:ietf:params:xml:ns:reginfo}reginfo``, a missing required attribute
            (``version``, ``state``, ``aor``, ``id``, ``event``) or ``<uri>``, or a value
            outside the schema's enumerations or number types.
    """
    if len(data) > MAX_DOCUMENT_SIZE:
        raise SipParseError(f"reginfo: document larger than {MAX_DOCUMENT_SIZE} bytes")
    root = _build(bytes(data))
    if root.ns != REGINFO_NS or root.name != "reginfo":
        raise SipParseError(f"reginfo: root element is {root.name!r}, not reginfo in {REGINFO_NS}")
    version = _uint(root, "version", required=True)
    assert version is not None
    info = RegInfo(version, cast(DocumentState, _enum(root, "state", DOCUMENT_STATES)))
    for node in root.children:
        if node.ns != REGINFO_NS or node.name != "registration":
            continue
        reg = Registration(
            aor=_required(node, "aor").strip(),
            id=_required(node, "id"),
            state=cast(RegistrationState, _enum(node, "state", REGISTRATION_STATES)),
        )
        for child in node.children:
            if child.ns == REGINFO_NS and child.name == "contact":
                reg.contacts.append(_parse_contact(child))
        info.registrations.append(reg)
    return info
