"""The RFC 4475 torture messages through the parser and the validators.

One test per ``.dat`` file of ``shared/conformance/rfc4475`` (see its ``MANIFEST.toml``):

* ``valid``: :func:`parse_message` (as a datagram) and :func:`validate_request` /
  :func:`validate_response` raise nothing;
* ``invalid``: :class:`SipParseError` with status 400 (505 for ``badvers``) -- except where the
  RFC allows leniency (``lwsstart``, ``trws``, ``baddate``, ``badaspec``): then either outcome
  is fine, but nothing other than :class:`SipParseError` may escape;
* ``semantic``: status 400 entries (``insuf``, ``multi01``, ``mcl01``) must raise
  :class:`SipParseError` (400) at parse or validation; the others (416, 420, 415, 401, 0, 483,
  406) are the server's decisions, so here they must simply parse and validate.

``baddn.dat`` lacks the final empty line, as printed in the RFC: ``datagram=True`` accepts that.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from sipstack.errors import SipParseError
from sipstack.message import Request, Response
from sipstack.parser import parse_message, validate_request, validate_response

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "rfc4475"
MANIFEST = CORPUS / "MANIFEST.toml"

if not MANIFEST.is_file():
    pytest.skip(f"RFC 4475 corpus not found at {CORPUS}", allow_module_level=True)

ENTRIES: dict[str, dict[str, Any]] = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
LENIENT = {"lwsstart", "trws", "baddate", "badaspec"}
SEMANTIC_400 = {"insuf", "multi01", "mcl01"}


def parse_and_validate(data: bytes) -> Request | Response:
    """Parse a datagram and run the validator for its kind; raises SipParseError."""
    msg = parse_message(data, datagram=True)
    if isinstance(msg, Request):
        validate_request(msg)
    else:
        validate_response(msg)
    return msg


def test_manifest_lists_every_file() -> None:
    files = {p.stem for p in CORPUS.glob("*.dat")}
    assert files == set(ENTRIES)
    assert set(ENTRIES) >= LENIENT
    assert set(ENTRIES) >= SEMANTIC_400
    for name in LENIENT:
        assert "leniency" in ENTRIES[name]["title"].lower()
    for name in SEMANTIC_400:
        assert ENTRIES[name]["status"] == 400


@pytest.mark.parametrize("name", sorted(ENTRIES), ids=sorted(ENTRIES))
def test_rfc4475(name: str) -> None:
    entry = ENTRIES[name]
    data = (CORPUS / f"{name}.dat").read_bytes()
    kind = entry["class"]
    if kind == "valid" or (kind == "semantic" and name not in SEMANTIC_400):
        msg = parse_and_validate(data)
        assert msg.encode()  # serialises
        return
    if name in LENIENT:
        try:
            parse_and_validate(data)
        except SipParseError as exc:
            assert exc.status == 400
        return
    expected = 505 if name == "badvers" else 400
    if kind == "semantic":
        assert entry["status"] == expected
    with pytest.raises(SipParseError) as exc:
        parse_and_validate(data)
    assert exc.value.status == expected, exc.value.reason


@pytest.mark.parametrize("name", sorted(ENTRIES), ids=sorted(ENTRIES))
def test_rfc4475_reparse_of_encoding(name: str) -> None:
    """Whatever parses re-encodes into bytes that parse to an equal message."""
    data = (CORPUS / f"{name}.dat").read_bytes()
    try:
        msg = parse_message(data, datagram=True)
    except SipParseError:
        return
    again = parse_message(msg.encode(), datagram=True)
    assert again == msg
    assert again.encode() == msg.encode()
