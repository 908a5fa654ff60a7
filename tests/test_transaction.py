"""Tests for sipstack.transaction: RFC 3261 §17 state machines and matching (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipstack.errors import SipParseError
from sipstack.message import Request, Response, make_response
from sipstack.parser import parse_message
from sipstack.transaction import (
    MAGIC_COOKIE,
    AckReceived,
    CancelReceived,
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    StrayResponse,
    TimerConfig,
    TransactionLayer,
    TransactionState,
    TransactionStateError,
    TransactionTerminated,
    TransactionTimeout,
    TransactionTransportError,
    TransmitMessage,
    has_magic_cookie,
    make_ack,
    make_cancel,
    new_branch,
)

BADBRANCH = Path("/work/shared/conformance/rfc4475/badbranch.dat")
SRC = ("192.0.2.1", 5060)
DST = ("192.0.2.99", 5060)
NO_GUARD = TimerConfig(max_pending=None)


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKabc123",
    transport: str = "UDP",
    sent_by: str = "192.0.2.1:5060",
    call_id: str = "call-1@192.0.2.1",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    from_tag: str | None = "f1",
    uri: str = "sip:bob@example.com",
    routes: tuple[str, ...] = (),
    extra: str = "",
) -> Request:
    """Build a request by parsing text, as the transport would hand it over."""
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        *[f"Route: {r}" for r in routes],
        "From: Alice <sip:alice@example.com>" + (f";tag={from_tag}" if from_tag else ""),
        "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@192.0.2.1>",
    ]
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    msg = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode(), datagram=True)
    assert isinstance(msg, Request)
    return msg


def response(req: Request, status: int, to_tag: str | None = "t1") -> Response:
    return make_response(req, status, to_tag=to_tag if status != 100 else None)


def wire(msg: Request | Response) -> Request | Response:
    """Round-trip through the parser: what the peer would receive."""
    return parse_message(msg.encode(), datagram=True)


def transmits(events: list) -> list:
    return [e.message for e in events if isinstance(e, TransmitMessage)]


def drive(layer: TransactionLayer, until: float) -> list[tuple[float, object]]:
    """Tick at every deadline up to ``until``; returns (time, event) pairs."""
    out: list[tuple[float, object]] = []
    while True:
        deadline = layer.next_deadline()
        if deadline is None or deadline > until:
            return out
        out.extend((deadline, e) for e in layer.tick(deadline))


# ----------------------------------------------------------------------------- timers, helpers


def test_timer_config_unreliable_table4() -> None:
    t = TimerConfig().timers(reliable=False)
    assert (t.A, t.B, t.D, t.E, t.F, t.G, t.H, t.I, t.J, t.K) == (
        0.5, 32.0, 32.0, 0.5, 32.0, 0.5, 32.0, 5.0, 32.0, 5.0,
    )
    assert (t.L, t.M, t.T2) == (32.0, 32.0, 4.0)


def test_timer_config_reliable_collapses() -> None:
    t = TimerConfig().timers(reliable=True)
    assert (t.A, t.E, t.G) == (None, None, None)
    assert (t.D, t.I, t.J, t.K) == (0.0, 0.0, 0.0, 0.0)
    assert (t.B, t.F, t.H) == (32.0, 32.0, 32.0)


def test_timer_config_scales_with_t1() -> None:
    t = TimerConfig(T1=0.1, T2=1.0).timers(False)
    assert t.A == 0.1 and t.T2 == 1.0
    assert abs(t.B - 6.4) < 1e-9


def test_new_branch_and_cookie() -> None:
    a, b = new_branch(), new_branch()
    assert a.startswith(MAGIC_COOKIE) and a != b and len(a) > 20
    assert has_magic_cookie(a)
    assert not has_magic_cookie("z9hG4bK")  # RFC 4475 §3.2.1
    assert not has_magic_cookie("abc123")
    assert not has_magic_cookie(None)


# ------------------------------------------------------------------------- client INVITE


def test_client_invite_udp_retransmits_with_timer_a_doubling_until_b() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    txn, events = layer.send_request(inv, DST, False, 0.0)
    assert events == [TransmitMessage(inv, DST, False)]
    assert txn.state is TransactionState.CALLING and len(layer) == 1
    fired = drive(layer, 100.0)
    retrans = [t for t, e in fired if isinstance(e, TransmitMessage)]
    assert retrans == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # intervals 0.5, 1, 2, 4, 8, 16
    assert all(e.message is inv for _, e in fired if isinstance(e, TransmitMessage))
    assert [(t, e) for t, e in fired if not isinstance(e, TransmitMessage)] == [
        (32.0, TransactionTimeout(txn)),
        (32.0, TransactionTerminated(txn)),
    ]
    assert txn.state is TransactionState.TERMINATED
    assert len(layer) == 0 and layer.next_deadline() is None


def test_client_invite_reliable_no_retransmissions() -> None:
    layer = TransactionLayer(NO_GUARD)
    txn, events = layer.send_request(request(transport="TCP"), DST, True, 0.0)
    assert len(events) == 1 and events[0].reliable is True
    assert layer.next_deadline() == 32.0
    assert layer.tick(31.9) == []
    assert layer.tick(32.0) == [TransactionTimeout(txn), TransactionTerminated(txn)]


def test_client_invite_provisional_stops_retransmission_and_timer_b() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    ringing = wire(response(inv, 180))
    assert layer.receive_response(ringing, DST, 0.3) == [ResponseReceived(ringing, txn)]
    assert txn.state is TransactionState.PROCEEDING
    assert layer.next_deadline() is None
    assert drive(layer, 1000.0) == []


def test_client_invite_pending_guard_times_out_proceeding() -> None:
    layer = TransactionLayer(TimerConfig(max_pending=60.0))
    inv = request()
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    layer.receive_response(wire(response(inv, 180)), DST, 1.0)
    assert layer.next_deadline() == 61.0
    layer.receive_response(wire(response(inv, 183)), DST, 10.0)  # progress restarts it
    assert layer.next_deadline() == 70.0
    assert layer.tick(70.0) == [TransactionTimeout(txn), TransactionTerminated(txn)]


def test_client_invite_4xx_ack_matches_rfc3261_17_1_1_3_field_by_field() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(
        routes=("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"),
        extra="Authorization: Digest username=\"a\"",
    )
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    busy = wire(response(inv, 486, to_tag="uas-tag"))
    events = layer.receive_response(busy, DST, 0.2)
    assert txn.state is TransactionState.COMPLETED
    assert events[0] == ResponseReceived(busy, txn)
    assert len(events) == 2 and isinstance(events[1], TransmitMessage)
    ack = events[1].message
    assert events[1].dest == DST and events[1].reliable is False
    assert isinstance(ack, Request) and ack is txn.ack
    # Request-URI equal to the INVITE's
    assert ack.method == "ACK" and ack.uri == inv.uri
    # exactly one Via, equal to the INVITE's top Via (same branch)
    assert ack.values("via") == [inv.values("via")[0]]
    assert ack.top_via.branch == inv.top_via.branch == "z9hG4bKabc123"
    # From, Call-ID equal to the INVITE's; To from the response, with its tag
    assert ack.get("from") == inv.get("from")
    assert ack.call_id == inv.call_id
    assert ack.get("to") == busy.get("to") and ack.to.tag == "uas-tag"
    # CSeq number of the INVITE, method ACK
    assert ack.cseq.number == inv.cseq.number and ack.cseq.method == "ACK"
    # the INVITE's Route header fields, in order
    assert ack.values("route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    # nothing else of the INVITE (no Contact, no Authorization), no body
    assert "contact" not in ack and "authorization" not in ack
    assert ack.body == b"" and ack.get("content-length") == "0"
    # it survives a round trip through the parser
    assert wire(ack) == ack


def test_client_invite_completed_absorbs_retransmitted_final_and_reacks() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    busy = wire(response(inv, 486))
    layer.receive_response(busy, DST, 0.2)
    again = layer.receive_response(wire(response(inv, 486)), DST, 1.0)
    assert again == [TransmitMessage(txn.ack, DST, False)]
    assert layer.next_deadline() == pytest.approx(32.2)  # Timer D
    assert layer.tick(32.2) == [TransactionTerminated(txn)]
    assert len(layer) == 0


def test_client_invite_4xx_reliable_terminates_at_once() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(transport="TLS")
    txn, _ = layer.send_request(inv, DST, True, 0.0)
    busy = wire(response(inv, 603))
    events = layer.receive_response(busy, DST, 0.2)
    assert events == [
        ResponseReceived(busy, txn),
        TransmitMessage(txn.ack, DST, True),
        TransactionTerminated(txn),
    ]
    assert len(layer) == 0


def test_client_invite_2xx_accepted_rfc6026_then_timer_m() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    ok = wire(response(inv, 200))
    assert layer.receive_response(ok, DST, 0.1) == [ResponseReceived(ok, txn)]
    assert txn.state is TransactionState.ACCEPTED and txn.ack is None
    # 2xx retransmission (or another fork's 2xx) goes to the TU again, no ACK from us
    ok2 = wire(response(inv, 200, to_tag="fork2"))
    assert layer.receive_response(ok2, DST, 0.6) == [ResponseReceived(ok2, txn)]
    assert layer.receive_response(wire(response(inv, 500)), DST, 0.7) == []
    assert layer.next_deadline() == pytest.approx(32.1)
    assert layer.tick(32.1) == [TransactionTerminated(txn)]
    late = wire(response(inv, 200))
    assert layer.receive_response(late, DST, 40.0) == [StrayResponse(late, DST)]


def test_client_transaction_standalone() -> None:
    inv = request()
    txn = ClientTransaction(inv, DST, False, NO_GUARD)
    assert txn.start(10.0) == [TransmitMessage(inv, DST, False)]
    assert txn.next_deadline() == 10.5
    assert txn.tick(10.5) == [TransmitMessage(inv, DST, False)]
    assert txn.next_deadline() == 11.5


# ------------------------------------------------------------------------ client non-INVITE


def test_client_non_invite_timer_e_capped_at_t2_until_f() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER")
    txn, _ = layer.send_request(reg, DST, False, 0.0)
    assert txn.state is TransactionState.TRYING
    fired = drive(layer, 100.0)
    retrans = [t for t, e in fired if isinstance(e, TransmitMessage)]
    # intervals 0.5, 1, 2, 4, 4, 4 ... (capped at T2)
    assert retrans == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [e for _, e in fired if not isinstance(e, TransmitMessage)] == [
        TransactionTimeout(txn),
        TransactionTerminated(txn),
    ]
    assert fired[-1][0] == 32.0


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer(NO_GUARD)
    opt = request("OPTIONS")
    txn, _ = layer.send_request(opt, DST, False, 0.0)
    assert layer.tick(0.5) == [TransmitMessage(opt, DST, False)]  # E -> 1.0 interval
    trying = wire(response(opt, 100))
    assert layer.receive_response(trying, DST, 0.6) == [ResponseReceived(trying, txn)]
    assert txn.state is TransactionState.PROCEEDING
    fired = drive(layer, 40.0)
    retrans = [t for t, e in fired if isinstance(e, TransmitMessage)]
    # the pending E (1.5) fires, then every T2
    assert retrans == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert fired[-1] == (32.0, TransactionTerminated(txn))


def test_client_non_invite_final_then_timer_k() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER")
    txn, _ = layer.send_request(reg, DST, False, 0.0)
    ok = wire(response(reg, 200))
    assert layer.receive_response(ok, DST, 0.2) == [ResponseReceived(ok, txn)]
    assert txn.state is TransactionState.COMPLETED
    assert layer.receive_response(wire(response(reg, 200)), DST, 0.7) == []  # absorbed
    assert layer.next_deadline() == pytest.approx(5.2)  # K = T4
    assert layer.tick(5.2) == [TransactionTerminated(txn)]


def test_client_non_invite_reliable() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER", transport="TCP")
    txn, _ = layer.send_request(reg, DST, True, 0.0)
    assert layer.next_deadline() == 32.0  # only F
    ok = wire(response(reg, 200))
    assert layer.receive_response(ok, DST, 0.2) == [
        ResponseReceived(ok, txn),
        TransactionTerminated(txn),
    ]
    assert len(layer) == 0


def test_client_non_invite_timeout_reliable() -> None:
    layer = TransactionLayer(NO_GUARD)
    txn, _ = layer.send_request(request("OPTIONS", transport="TLS"), DST, True, 5.0)
    assert drive(layer, 100.0) == [
        (37.0, TransactionTimeout(txn)),
        (37.0, TransactionTerminated(txn)),
    ]


def test_send_request_rejects_ack_duplicates_and_bad_branch() -> None:
    layer = TransactionLayer()
    with pytest.raises(ValueError):
        layer.send_request(request("ACK"), DST, False, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request(branch="1234"), DST, False, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request(branch="z9hG4bK"), DST, False, 0.0)
    layer.send_request(request(), DST, False, 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request(), DST, False, 0.0)
    with pytest.raises(SipParseError):
        layer.send_request(Request("OPTIONS", "sip:x@y", []), DST, False, 0.0)


def test_client_cancel_is_its_own_transaction() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(routes=("<sip:p1.example.com;lr>",))
    inv_txn, _ = layer.send_request(inv, DST, False, 0.0)
    layer.receive_response(wire(response(inv, 180)), DST, 0.1)
    cancel = make_cancel(inv)
    assert cancel.method == "CANCEL" and cancel.uri == inv.uri
    assert cancel.values("via") == [inv.values("via")[0]]
    assert cancel.cseq.number == 1 and cancel.cseq.method == "CANCEL"
    assert cancel.get("to") == inv.get("to") and cancel.get("from") == inv.get("from")
    assert cancel.values("route") == ["<sip:p1.example.com;lr>"]
    c_txn, _ = layer.send_request(cancel, DST, False, 1.0)
    assert c_txn is not inv_txn and len(layer) == 2
    ok = wire(response(cancel, 200))
    assert layer.receive_response(ok, DST, 1.1) == [ResponseReceived(ok, c_txn)]
    terminated = wire(response(inv, 487))
    events = layer.receive_response(terminated, DST, 1.2)
    assert events[0] == ResponseReceived(terminated, inv_txn)
    assert transmits(events) == [inv_txn.ack]


# ------------------------------------------------------------------------------ stray


def test_stray_responses() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    layer.send_request(inv, DST, False, 0.0)
    unknown = wire(response(request(branch="z9hG4bKother"), 200))
    assert layer.receive_response(unknown, DST, 0.1) == [StrayResponse(unknown, DST)]
    # same branch but another CSeq method (§17.1.3 rule 2)
    wrong_method = wire(response(request("OPTIONS"), 200))
    assert layer.receive_response(wrong_method, DST, 0.1) == [StrayResponse(wrong_method, DST)]
    no_branch = wire(response(request(branch=None), 200))
    assert layer.receive_response(no_branch, DST, 0.1) == [StrayResponse(no_branch, DST)]


# ------------------------------------------------------------------------- server INVITE


def test_server_invite_sends_100_trying_after_200ms() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(extra="Timestamp: 54")
    events = layer.receive_request(inv, SRC, 0.0)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    txn = events[0].transaction
    assert events[0].request is inv and txn.state is TransactionState.PROCEEDING
    assert layer.next_deadline() == pytest.approx(0.2)
    assert layer.tick(0.1) == []
    out = layer.tick(0.2)
    assert len(out) == 1 and out[0].dest == SRC and out[0].reliable is False
    trying = out[0].message
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None and trying.get("timestamp") == "54"
    assert trying.values("via") == inv.values("via")
    # a retransmitted INVITE gets the 100 again, never a second RequestReceived
    assert layer.receive_request(wire(inv), SRC, 0.5) == [TransmitMessage(trying, SRC, False)]
    assert len(layer) == 1


def test_server_invite_no_100_when_tu_answers_in_time() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    ringing = response(inv, 180)
    assert layer.send_response(ev.transaction, ringing, 0.05) == [
        TransmitMessage(ringing, SRC, False)
    ]
    assert layer.tick(0.3) == []
    assert layer.next_deadline() is None  # Proceeding waits on the TU only


def test_server_invite_retransmission_before_any_response_sends_100_at_once() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    layer.receive_request(inv, SRC, 0.0)
    out = layer.receive_request(wire(inv), SRC, 0.1)
    assert [m.status for m in transmits(out)] == [100]
    assert layer.tick(0.2) == []


def test_server_invite_absorbs_retransmission_with_last_provisional() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    layer.tick(0.2)
    ringing = response(inv, 180)
    layer.send_response(txn, ringing, 1.0)
    assert layer.receive_request(wire(inv), SRC, 1.5) == [TransmitMessage(ringing, SRC, False)]


def test_server_invite_4xx_timer_g_until_h() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    busy = response(inv, 486)
    assert layer.send_response(txn, busy, 0.1) == [TransmitMessage(busy, SRC, False)]
    assert txn.state is TransactionState.COMPLETED
    fired = drive(layer, 100.0)
    retrans = [round(t - 0.1, 6) for t, e in fired if isinstance(e, TransmitMessage)]
    # G: 0.5, 1, 2, 4, 4, ... (capped at T2) until H = 64*T1
    assert retrans == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(e.message is busy for _, e in fired if isinstance(e, TransmitMessage))
    assert [e for _, e in fired if not isinstance(e, TransmitMessage)] == [
        TransactionTimeout(txn),
        TransactionTerminated(txn),
    ]
    assert fired[-1][0] == pytest.approx(32.1)


def test_server_invite_completed_resends_final_and_ack_confirms_then_timer_i() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    busy = response(inv, 486, to_tag="srv")
    layer.send_response(txn, busy, 0.1)
    assert layer.receive_request(wire(inv), SRC, 0.3) == [TransmitMessage(busy, SRC, False)]
    # the ACK the client transaction generates (RFC 3261 §17.1.1.3)
    ack = wire(make_ack(inv, wire(busy)))
    assert layer.receive_request(ack, SRC, 0.4) == []
    assert txn.state is TransactionState.CONFIRMED
    assert layer.next_deadline() == pytest.approx(5.4)  # I = T4; G and H stopped
    assert layer.receive_request(ack, SRC, 0.6) == []  # absorbed
    assert layer.receive_request(wire(inv), SRC, 0.7) == []  # absorbed
    assert layer.tick(5.4) == [TransactionTerminated(txn)]
    assert len(layer) == 0


def test_server_invite_reliable_no_g_and_immediate_i() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(transport="TCP")
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    assert txn.reliable is True
    busy = response(inv, 404)
    assert layer.send_response(txn, busy, 0.1) == [TransmitMessage(busy, SRC, True)]
    assert layer.next_deadline() == pytest.approx(32.1)  # only H
    ack = wire(make_ack(inv, wire(busy)))
    assert layer.receive_request(ack, SRC, 0.2) == [TransactionTerminated(txn)]
    assert len(layer) == 0


def test_server_invite_2xx_accepted_absorbs_retrans_and_passes_2xx_ack() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    ok = response(inv, 200)
    assert layer.send_response(txn, ok, 0.1) == [TransmitMessage(ok, SRC, False)]
    assert txn.state is TransactionState.ACCEPTED
    assert layer.receive_request(wire(inv), SRC, 0.6) == []  # RFC 6026: absorbed
    # the TU (UA core) retransmits its 2xx through the transaction
    assert layer.send_response(txn, ok, 0.6) == [TransmitMessage(ok, SRC, False)]
    with pytest.raises(TransactionStateError):
        layer.send_response(txn, response(inv, 486), 0.7)
    # the ACK for a 2xx has its own branch: not part of the transaction
    ack = request("ACK", branch="z9hG4bKack2xx", to_tag="t1")
    assert layer.receive_request(ack, SRC, 0.8) == [AckReceived(ack, SRC)]
    # an ACK reusing the INVITE branch while Accepted is passed up too (RFC 6026 §8.5)
    ack_same = request("ACK", to_tag="t1")
    assert layer.receive_request(ack_same, SRC, 0.9) == [AckReceived(ack_same, SRC)]
    assert layer.next_deadline() == pytest.approx(32.1)  # Timer L
    assert layer.tick(32.1) == [TransactionTerminated(txn)]


def test_server_transaction_errors() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    with pytest.raises(ValueError):
        layer.send_response(ev.transaction, Response(700, "x", []), 0.1)
    layer.send_response(ev.transaction, response(inv, 486), 0.1)
    with pytest.raises(TransactionStateError):
        layer.send_response(ev.transaction, response(inv, 500), 0.2)
    with pytest.raises(TransactionStateError):
        layer.send_response(("no", "such", "key"), response(inv, 500), 0.2)
    layer.tick(100.0)
    with pytest.raises(TransactionStateError):  # terminated and removed
        layer.send_response(ev.transaction, response(inv, 500), 101.0)
    with pytest.raises(ValueError):
        ServerTransaction(request("ACK"), SRC, False)


def test_send_response_by_key() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER")
    (ev,) = layer.receive_request(reg, SRC, 0.0)
    ok = response(reg, 200)
    assert layer.send_response(ev.transaction.key, ok, 0.1) == [TransmitMessage(ok, SRC, False)]


# --------------------------------------------------------------------- server non-INVITE


def test_server_non_invite_trying_absorbs_then_completed_resends_then_timer_j() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER")
    (ev,) = layer.receive_request(reg, SRC, 0.0)
    txn = ev.transaction
    assert ev == RequestReceived(reg, txn) and txn.state is TransactionState.TRYING
    assert layer.next_deadline() is None  # no automatic 100 for non-INVITE
    assert layer.receive_request(wire(reg), SRC, 0.5) == []  # Trying: absorbed
    ok = response(reg, 200)
    assert layer.send_response(txn, ok, 0.6) == [TransmitMessage(ok, SRC, False)]
    assert txn.state is TransactionState.COMPLETED
    assert layer.receive_request(wire(reg), SRC, 1.0) == [TransmitMessage(ok, SRC, False)]
    assert layer.next_deadline() == pytest.approx(32.6)  # J = 64*T1
    assert layer.tick(32.6) == [TransactionTerminated(txn)]
    # after J a retransmission is a new request again
    again = layer.receive_request(wire(reg), SRC, 33.0)
    assert len(again) == 1 and isinstance(again[0], RequestReceived)


def test_server_non_invite_proceeding_resends_provisional() -> None:
    layer = TransactionLayer(NO_GUARD)
    sub = request("SUBSCRIBE")
    (ev,) = layer.receive_request(sub, SRC, 0.0)
    trying = response(sub, 100)
    layer.send_response(ev.transaction, trying, 0.1)
    assert ev.transaction.state is TransactionState.PROCEEDING
    assert layer.receive_request(wire(sub), SRC, 0.5) == [TransmitMessage(trying, SRC, False)]


def test_server_non_invite_reliable_timer_j_zero() -> None:
    layer = TransactionLayer(NO_GUARD)
    reg = request("REGISTER", transport="TLS")
    (ev,) = layer.receive_request(reg, SRC, 0.0)
    ok = response(reg, 200)
    assert layer.send_response(ev.transaction, ok, 0.1) == [
        TransmitMessage(ok, SRC, True),
        TransactionTerminated(ev.transaction),
    ]
    assert len(layer) == 0


def test_server_reliable_override() -> None:
    layer = TransactionLayer(NO_GUARD)
    (ev,) = layer.receive_request(request("OPTIONS"), SRC, 0.0, reliable=True)
    assert ev.transaction.reliable is True


def test_server_pending_guard() -> None:
    layer = TransactionLayer(TimerConfig(max_pending=10.0))
    (ev,) = layer.receive_request(request("OPTIONS"), SRC, 0.0)
    assert layer.next_deadline() == 10.0
    assert layer.tick(10.0) == [TransactionTimeout(ev.transaction),
                                TransactionTerminated(ev.transaction)]
    assert len(layer) == 0


# --------------------------------------------------------------------------- matching


def test_server_matching_uses_branch_sent_by_and_method() -> None:
    layer = TransactionLayer(NO_GUARD)
    (a,) = layer.receive_request(request(), SRC, 0.0)
    # same branch, other sent-by: another transaction (§17.2.3)
    (b,) = layer.receive_request(request(sent_by="192.0.2.7:5060"), SRC, 0.0)
    # same branch and sent-by, other method: another transaction
    (c,) = layer.receive_request(request("OPTIONS"), SRC, 0.0)
    assert isinstance(b, RequestReceived) and isinstance(c, RequestReceived)
    assert len({a.transaction.key, b.transaction.key, c.transaction.key}) == 3
    assert not a.transaction.rfc2543
    assert len(layer) == 3
    # sent-by host compares case-insensitively
    assert layer.receive_request(request(sent_by="HOST.example.com"), SRC, 0.0)
    again = layer.receive_request(request(sent_by="host.EXAMPLE.com"), SRC, 0.1)
    assert [m.status for m in transmits(again)] == [100] and len(layer) == 4


def test_cancel_matching() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    inv_txn = ev.transaction
    cancel = wire(make_cancel(inv))
    assert layer.find_invite_for_cancel(cancel) is inv_txn
    events = layer.receive_request(cancel, SRC, 0.1)
    assert len(events) == 1 and isinstance(events[0], CancelReceived)
    c = events[0]
    assert c.cancel is cancel and c.invite_transaction is inv_txn
    assert c.transaction is not inv_txn and c.transaction.method == "CANCEL"
    assert len(layer) == 2
    ok = response(cancel, 200)
    layer.send_response(c.transaction, ok, 0.2)
    terminated = response(inv, 487)
    layer.send_response(inv_txn, terminated, 0.2)
    # a retransmitted CANCEL gets the 200 again, not a second CancelReceived
    assert layer.receive_request(wire(cancel), SRC, 0.6) == [TransmitMessage(ok, SRC, False)]
    assert inv_txn.state is TransactionState.COMPLETED


def test_cancel_without_invite() -> None:
    layer = TransactionLayer(NO_GUARD)
    cancel = request("CANCEL", branch="z9hG4bKnothere")
    (ev,) = layer.receive_request(cancel, SRC, 0.0)
    assert isinstance(ev, CancelReceived) and ev.invite_transaction is None
    # another sent-by with the INVITE's branch does not find it either
    layer.receive_request(request(), SRC, 0.0)
    assert layer.find_invite_for_cancel(request("CANCEL", sent_by="192.0.2.9")) is None


def test_rfc2543_matching_without_cookie() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(branch="2543branch1")
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    txn = ev.transaction
    assert txn.rfc2543
    assert [m.status for m in transmits(layer.receive_request(wire(inv), SRC, 0.1))] == [100]
    # a different CSeq is a different transaction
    (other,) = layer.receive_request(request(branch="2543branch1", cseq=2), SRC, 0.1)
    assert isinstance(other, RequestReceived) and other.transaction is not txn
    busy = response(inv, 486, to_tag="srvtag")
    layer.send_response(txn, busy, 0.2)
    assert layer.receive_request(wire(inv), SRC, 0.3) == [TransmitMessage(busy, SRC, False)]
    # an ACK whose To tag is not the response's does not match (it is passed up)
    stray_ack = request("ACK", branch="2543branch1", to_tag="othertag")
    assert layer.receive_request(stray_ack, SRC, 0.4) == [AckReceived(stray_ack, SRC)]
    assert txn.state is TransactionState.COMPLETED
    # the ACK for the 486 (To tag of the response) matches and confirms
    ack = wire(make_ack(inv, wire(busy)))
    assert layer.receive_request(ack, SRC, 0.5) == []
    assert txn.state is TransactionState.CONFIRMED
    # CANCEL matching, 2543 style
    cancel = wire(make_cancel(request(branch="2543branch1", cseq=2)))
    assert layer.find_invite_for_cancel(cancel) is other.transaction
    layer.tick(100.0)
    assert len(layer) == 1  # the cseq-2 INVITE is still waiting for its TU


def test_rfc2543_cancel_and_no_branch() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request(branch=None)
    (ev,) = layer.receive_request(inv, SRC, 0.0)
    cancel = wire(make_cancel(inv))
    assert layer.find_invite_for_cancel(cancel) is ev.transaction
    (c,) = layer.receive_request(cancel, SRC, 0.1)
    assert isinstance(c, CancelReceived) and c.invite_transaction is ev.transaction


def test_rfc4475_badbranch_uses_2543_matching() -> None:
    data = BADBRANCH.read_bytes()
    req = parse_message(data, datagram=True)
    assert isinstance(req, Request) and req.top_via.branch == "z9hG4bK"
    layer = TransactionLayer(NO_GUARD)
    (ev,) = layer.receive_request(req, SRC, 0.0)
    assert isinstance(ev, RequestReceived) and ev.transaction.rfc2543
    # the retransmission is absorbed, not a new transaction
    assert layer.receive_request(parse_message(data, datagram=True), SRC, 0.5) == []
    # another request carrying the same bare-cookie branch is a different transaction
    other = parse_message(data.replace(b"badbranch.", b"otherbranch."), datagram=True)
    (ev2,) = layer.receive_request(other, SRC, 0.6)
    assert isinstance(ev2, RequestReceived) and ev2.transaction is not ev.transaction
    ok = make_response(req, 200, to_tag="x")
    assert layer.send_response(ev.transaction, ok, 1.0) == [TransmitMessage(ok, SRC, False)]
    assert layer.receive_request(parse_message(data, datagram=True), SRC, 1.1) == [
        TransmitMessage(ok, SRC, False)
    ]


def test_ack_without_transaction_goes_to_tu() -> None:
    layer = TransactionLayer(NO_GUARD)
    ack = request("ACK", to_tag="t")
    assert layer.receive_request(ack, SRC, 0.0) == [AckReceived(ack, SRC)]
    ack2543 = request("ACK", branch=None, to_tag="t")
    assert layer.receive_request(ack2543, SRC, 0.0) == [AckReceived(ack2543, SRC)]
    assert len(layer) == 0


def test_receive_request_without_via_raises() -> None:
    layer = TransactionLayer()
    with pytest.raises(SipParseError):
        layer.receive_request(Request("OPTIONS", "sip:x@y", []), SRC, 0.0)


# --------------------------------------------------------------------- capacity, errors


def test_overload_cap_answers_503_statelessly() -> None:
    layer = TransactionLayer(NO_GUARD, max_transactions=1, overload_retry_after=7)
    layer.receive_request(request(), SRC, 0.0)
    reg = request("REGISTER", branch="z9hG4bKreg")
    events = layer.receive_request(reg, SRC, 0.1)
    assert len(events) == 1 and isinstance(events[0], TransmitMessage)
    busy = events[0].message
    assert isinstance(busy, Response) and busy.status == 503
    assert busy.get("retry-after") == "7" and busy.to.tag
    assert busy.top_via.branch == "z9hG4bKreg" and events[0].dest == SRC
    assert len(layer) == 1 and layer.overload_rejections == 1
    # ACKs need no state and still pass
    ack = request("ACK", branch="z9hG4bKack")
    assert layer.receive_request(ack, SRC, 0.2) == [AckReceived(ack, SRC)]
    # retransmissions of the existing transaction are still matched
    assert [m.status for m in transmits(layer.receive_request(request(), SRC, 0.3))] == [100]


def test_transport_error_by_transaction_key_and_dest() -> None:
    layer = TransactionLayer(NO_GUARD)
    t1, _ = layer.send_request(request(branch="z9hG4bK1"), DST, True, 0.0)
    t2, _ = layer.send_request(request("OPTIONS", branch="z9hG4bK2"), DST, True, 0.0)
    t3, _ = layer.send_request(request("OPTIONS", branch="z9hG4bK3"), ("other", 1), True, 0.0)
    (s,) = layer.receive_request(request(branch="z9hG4bKs"), SRC, 0.0)
    assert layer.transport_error(t3, 1.0) == [
        TransactionTransportError(t3), TransactionTerminated(t3)
    ]
    assert layer.transport_error(t3, 1.0) == []
    assert layer.transport_error(s.transaction.key, 1.0) == [
        TransactionTransportError(s.transaction), TransactionTerminated(s.transaction)
    ]
    events = layer.transport_error(DST, 1.0)
    assert events == [
        TransactionTransportError(t1), TransactionTerminated(t1),
        TransactionTransportError(t2), TransactionTerminated(t2),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None
    assert layer.transport_error([1, 2], 1.0) == []  # unhashable, unknown dest


def test_many_transactions_share_one_heap() -> None:
    layer = TransactionLayer(NO_GUARD)
    txns = [
        layer.send_request(request("OPTIONS", branch=f"z9hG4bK{i}"), DST, False, i * 0.1)[0]
        for i in range(50)
    ]
    assert layer.next_deadline() == 0.5
    for txn in txns[:25]:
        layer.receive_response(wire(response(txn.request, 200)), DST, 6.0)
    fired = drive(layer, 1000.0)
    terminated = [e.transaction for _, e in fired if isinstance(e, TransactionTerminated)]
    timeouts = [e.transaction for _, e in fired if isinstance(e, TransactionTimeout)]
    assert set(map(id, terminated)) == set(map(id, txns))
    assert set(map(id, timeouts)) == set(map(id, txns[25:]))
    assert len(layer) == 0 and layer.next_deadline() is None
    assert len(layer._heap) <= 64


def test_late_tick_fires_due_timers_in_order() -> None:
    layer = TransactionLayer(NO_GUARD)
    inv = request()
    txn, _ = layer.send_request(inv, DST, False, 0.0)
    # a very late tick: A fires once (rescheduled from now), then B
    events = layer.tick(40.0)
    assert events == [
        TransmitMessage(inv, DST, False), TransactionTimeout(txn), TransactionTerminated(txn)
    ]


def test_answers_at_once_rules() -> None:
    """RFC 3261 §17.2.2: a non-INVITE request over a reliable transport needs no server
    transaction when nothing matches it; INVITE, ACK, CANCEL, a match and the cap do."""
    layer = TransactionLayer(NO_GUARD)
    assert layer.answers_at_once(request("REGISTER", transport="TCP"))
    assert layer.answers_at_once(request("OPTIONS", transport="TLS"))
    for method in ("INVITE", "ACK", "CANCEL"):
        assert not layer.answers_at_once(request(method, transport="TCP"))
    # A live transaction with the same key (first received over UDP) takes its retransmission.
    reg = request("REGISTER", branch="z9hG4bKsame")
    (ev,) = layer.receive_request(reg, SRC, 0.0)
    assert not layer.answers_at_once(request("REGISTER", branch="z9hG4bKsame"))
    assert layer.answers_at_once(request("REGISTER", branch="z9hG4bKother", transport="TCP"))
    # Over the cap the caller must take receive_request (which answers the overload 503).
    capped = TransactionLayer(NO_GUARD, max_transactions=1)
    capped.receive_request(request("OPTIONS"), SRC, 0.0)
    assert not capped.answers_at_once(request("REGISTER", branch="z9hG4bKx", transport="TCP"))
    assert ev.transaction is not None
