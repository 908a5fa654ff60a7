"""Tests for sipstack.dialog: RFC 3261 §12 dialog state, in-dialog requests, the store."""

from __future__ import annotations

import pytest

from sipstack.dialog import Dialog, DialogError, DialogSet, DialogState
from sipstack.message import Request, Response, make_response
from sipstack.parser import parse_message


def invite(*, record_route: tuple[str, ...] = (), uri: str = "sip:bob@example.com") -> Request:
    lines = [
        f"INVITE {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKinv1",
        "Max-Forwards: 70",
        *[f"Record-Route: {r}" for r in record_route],
        "From: \"Alice\" <sip:alice@atlanta.example.com>;tag=alice-tag",
        "To: <sip:bob@example.com>",
        "Call-ID: dlg-1@192.0.2.1",
        "CSeq: 314 INVITE",
        "Contact: <sip:alice@192.0.2.1:5060;transport=udp>",
        "Content-Length: 0",
    ]
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode(), datagram=True)
    assert isinstance(msg, Request)
    return msg


def answer(
    req: Request,
    status: int = 200,
    *,
    to_tag: str | None = "bob-tag",
    record_route: tuple[str, ...] = (),
    contact: str | None = "<sip:bob@192.0.2.2:5070>",
) -> Response:
    resp = make_response(req, status, to_tag=to_tag)
    for rr in record_route:
        resp.add("Record-Route", rr)
    if contact is not None:
        resp.add("Contact", contact)
    parsed = parse_message(resp.encode(), datagram=True)
    assert isinstance(parsed, Response)
    return parsed


RR = ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")


# ------------------------------------------------------------------------------- creation


def test_from_uac_reverses_record_route() -> None:
    req = invite()
    resp = answer(req, record_route=RR)
    d = Dialog.from_uac(req, resp)
    assert d.dialog_id == ("dlg-1@192.0.2.1", "alice-tag", "bob-tag")
    assert d.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert d.remote_target == "sip:bob@192.0.2.2:5070"
    assert d.local_seq == 314 and d.remote_seq is None
    assert d.local_uri == "sip:alice@atlanta.example.com"
    assert d.remote_uri == "sip:bob@example.com"
    assert d.state is DialogState.CONFIRMED and d.secure is False


def test_from_uas_keeps_record_route_order() -> None:
    req = invite(record_route=RR)
    resp = answer(req)
    d = Dialog.from_uas(req, resp)
    assert d.dialog_id == ("dlg-1@192.0.2.1", "bob-tag", "alice-tag")
    assert d.route_set == list(RR)
    assert d.remote_target == "sip:alice@192.0.2.1:5060;transport=udp"
    assert d.remote_seq == 314 and d.local_seq is None
    assert d.local_uri == "sip:bob@example.com"
    assert d.remote_uri == "sip:alice@atlanta.example.com"


def test_record_route_in_one_header_line_and_several() -> None:
    req = invite()
    resp = answer(req, record_route=("<sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
                                     "<sip:p3.example.com;lr>"))
    d = Dialog.from_uac(req, resp)
    assert d.route_set == [
        "<sip:p3.example.com;lr>", "<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"
    ]


def test_early_dialog_then_confirmed_by_2xx() -> None:
    req = invite()
    early = Dialog.from_uac(req, answer(req, 180, record_route=RR))
    assert early.state is DialogState.EARLY
    ok = answer(req, 200, record_route=("<sip:p9.example.com;lr>",),
                contact="<sip:bob@198.51.100.7>")
    early.receive_response(req, ok)
    assert early.state is DialogState.CONFIRMED
    assert early.route_set == ["<sip:p9.example.com;lr>"]
    assert early.remote_target == "sip:bob@198.51.100.7"
    # a 4xx changes nothing
    early.receive_response(req, answer(req, 488, contact="<sip:x@y>"))
    assert early.remote_target == "sip:bob@198.51.100.7"


def test_secure_from_sips_request_uri_or_explicit() -> None:
    req = invite(uri="sips:bob@example.com")
    assert Dialog.from_uas(req, answer(req)).secure is True
    assert Dialog.from_uac(invite(), answer(invite()), secure=True).secure is True


def test_creation_errors() -> None:
    req = invite()
    with pytest.raises(DialogError):
        Dialog.from_uac(req, answer(req, 200, to_tag=None))
    with pytest.raises(DialogError):
        Dialog.from_uac(req, answer(req, 100, to_tag=None))
    with pytest.raises(DialogError):
        Dialog.from_uac(req, answer(req, 486))
    with pytest.raises(DialogError):
        Dialog.from_uac(req, answer(req, 200, contact=None))
    assert issubclass(DialogError, ValueError)


# ------------------------------------------------------------------ in-dialog requests


def test_create_request_loose_routing() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req, record_route=RR))
    bye = d.create_request("BYE")
    assert bye.method == "BYE"
    assert bye.uri == "sip:bob@192.0.2.2:5070"  # remote target
    assert bye.values("route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert bye.to.tag == "bob-tag" and str(bye.to.uri) == "sip:bob@example.com"
    assert bye.from_.tag == "alice-tag" and str(bye.from_.uri) == "sip:alice@atlanta.example.com"
    assert bye.call_id == "dlg-1@192.0.2.1"
    assert bye.cseq.number == 315 and bye.cseq.method == "BYE"
    assert bye.get("max-forwards") == "70" and bye.get("content-length") == "0"
    assert "via" not in bye  # the caller adds it
    assert d.local_seq == 315
    assert d.create_request("INFO").cseq.number == 316


def test_create_request_strict_routing() -> None:
    req = invite()
    strict = ("<sip:strict1.example.com;maddr=10.0.0.1>", "<sip:p2.example.com;lr>")
    d = Dialog.from_uac(req, answer(req, record_route=tuple(reversed(strict))))
    assert d.route_set == list(strict)
    bye = d.create_request("BYE")
    assert bye.uri == "sip:strict1.example.com;maddr=10.0.0.1"
    assert bye.values("route") == ["<sip:p2.example.com;lr>", "<sip:bob@192.0.2.2:5070>"]


def test_create_request_without_route_set() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    opt = d.create_request("OPTIONS", contact="<sip:alice@192.0.2.1>", body=b"x=1",
                           content_type="text/plain")
    assert opt.uri == "sip:bob@192.0.2.2:5070" and "route" not in opt
    assert opt.get("contact") == "<sip:alice@192.0.2.1>"
    assert opt.body == b"x=1" and opt.get("content-length") == "3"
    assert opt.content_type == "text/plain"
    assert parse_message(opt.encode(), datagram=True) == opt


def test_ack_reuses_invite_cseq() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    ack = d.create_request("ACK")
    assert ack.cseq.number == 314 and ack.cseq.method == "ACK"
    assert d.local_seq == 314
    reinvite = d.create_request("INVITE", contact="<sip:alice@192.0.2.1>")
    assert reinvite.cseq.number == 315
    assert d.create_request("ACK").cseq.number == 315
    assert d.create_request("ACK", cseq=314).cseq.number == 314
    assert d.local_seq == 315


def test_uas_first_request_picks_initial_cseq() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    assert d.local_seq is None
    bye = d.create_request("BYE")
    assert 1 <= bye.cseq.number < 2**31
    assert d.local_seq == bye.cseq.number
    assert bye.to.tag == "alice-tag" and bye.from_.tag == "bob-tag"
    assert bye.uri == "sip:alice@192.0.2.1:5060;transport=udp"


# ------------------------------------------------------------------- incoming requests


def _in_dialog(d: Dialog, method: str, cseq: int) -> Request:
    """A request the peer sends in dialog ``d`` (tags swapped)."""
    text = (
        f"{method} sip:bob@192.0.2.2:5070 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n"
        f"From: <{d.remote_uri}>;tag={d.remote_tag}\r\n"
        f"To: <{d.local_uri}>;tag={d.local_tag}\r\n"
        f"Call-ID: {d.call_id}\r\nCSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@203.0.113.5>\r\nContent-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode(), datagram=True)
    assert isinstance(msg, Request)
    return msg


def test_receive_request_cseq_ordering() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    assert d.remote_seq == 314
    assert d.receive_request(_in_dialog(d, "ACK", 314)) is True
    assert d.receive_request(_in_dialog(d, "INFO", 316)) is True
    assert d.remote_seq == 316
    assert d.receive_request(_in_dialog(d, "INFO", 315)) is False  # out of order -> 500
    assert d.remote_seq == 316
    assert d.receive_request(_in_dialog(d, "INFO", 316)) is True  # equal is not lower
    # a late ACK for the first INVITE is never "out of order"
    assert d.receive_request(_in_dialog(d, "ACK", 314)) is True
    assert d.remote_seq == 316
    assert d.receive_request(_in_dialog(d, "BYE", 400)) is True and d.remote_seq == 400


def test_receive_request_sets_empty_remote_seq() -> None:
    req = invite()
    d = Dialog.from_uac(req, answer(req))
    assert d.remote_seq is None
    assert d.receive_request(_in_dialog(d, "BYE", 5)) is True  # any value is accepted
    assert d.remote_seq == 5
    assert d.receive_request(_in_dialog(d, "INFO", 4)) is False


def test_target_refresh() -> None:
    req = invite()
    d = Dialog.from_uas(req, answer(req))
    reinvite = _in_dialog(d, "INVITE", 315)
    assert d.receive_request(reinvite) is True
    assert d.remote_target == "sip:alice@192.0.2.1:5060;transport=udp"  # not yet
    d.update_remote_target(reinvite)
    assert d.remote_target == "sip:alice@203.0.113.5"


# --------------------------------------------------------------------------- the store


def test_dialog_set_lookup_both_directions() -> None:
    req = invite()
    resp = answer(req, record_route=RR)
    uac = Dialog.from_uac(req, resp)
    uas = Dialog.from_uas(req, resp)
    store = DialogSet()
    store.add(uac)
    store.add(uas)
    assert len(store) == 2 and uac in store and uas in store
    assert store.get("dlg-1@192.0.2.1", "alice-tag", "bob-tag") is uac
    # the UAC receives a request from Bob: To tag is alice-tag
    assert store.find_for_request(_in_dialog(uac, "BYE", 1)) is uac
    # the UAS receives a request from Alice
    assert store.find_for_request(_in_dialog(uas, "BYE", 1)) is uas
    # responses to the UAC's own requests
    assert store.find_for_response(resp) is uac
    assert uac.matches(resp, incoming_request=False)
    assert not uac.matches(resp, incoming_request=True)
    assert store.remove(uac) is uac and uac not in store
    assert store.remove(uas.dialog_id) is uas and len(store) == 0
    assert store.remove(uas) is None
    assert store.find_for_request(_in_dialog(uas, "BYE", 1)) is None
    assert list(store) == []


def test_dialog_set_cap() -> None:
    req = invite()
    store = DialogSet(max_dialogs=1)
    store.add(Dialog.from_uac(req, answer(req)))
    store.add(Dialog.from_uac(req, answer(req)))  # same ID: replaces
    with pytest.raises(DialogError):
        store.add(Dialog.from_uac(req, answer(req, to_tag="fork2")))
