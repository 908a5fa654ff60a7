"""SIP dialogs (RFC 3261 §12), sans-I/O.

A :class:`Dialog` is the state two UAs share after a dialog-creating request (INVITE,
SUBSCRIBE, REFER ...) got a 101-299 response with a To tag: Call-ID, tags, CSeq counters,
URIs, the remote target and the route set. It builds in-dialog requests
(:meth:`Dialog.create_request`, §12.2.1.1) and checks incoming ones (:meth:`Dialog.receive_request`,
§12.2.2). :class:`DialogSet` is a store keyed by :attr:`Dialog.dialog_id`.

URIs and route entries are kept as strings in their wire form: ``local_uri`` ``"sip:a@x"``,
``remote_target`` ``"sip:a@192.0.2.1:5060;transport=tcp"``, ``route_set`` entries as
name-addrs (``"<sip:p1.example.com;lr>"``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import SipParseError
from .headers import parse_name_addr
from .message import Message, Request, Response
from .uri import SipUri

__all__ = ["TARGET_REFRESH", "Dialog", "DialogError", "DialogId", "DialogSet", "DialogState"]

DialogId = tuple[str, str, str]
"""``(call_id, local_tag, remote_tag)`` (RFC 3261 §12)."""

TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
"""Methods whose requests and 2xx responses refresh the remote target (RFC 3261 §12.2,
RFC 3311, RFC 6665 §4.1.2.2, RFC 3515)."""


class DialogError(ValueError):
    """A message cannot create or belong to a dialog (no tag, wrong status, no Contact ...)."""


class DialogState(StrEnum):
    """Dialog states (RFC 3261 §12): early (1xx with To tag) or confirmed (2xx)."""

    EARLY = "early"
    CONFIRMED = "confirmed"


def _initial_cseq() -> int:
    """A fresh local CSeq number: random, well below 2**31 so it can grow (§8.1.1.5)."""
    return secrets.randbelow(2**30) + 1


def _contact_uri(message: Message) -> str:
    try:
        contacts = message.contacts
    except SipParseError as exc:
        raise DialogError(f"bad Contact: {exc.reason}") from exc
    if not contacts or contacts[0].uri is None:
        raise DialogError("no Contact to use as the remote target (RFC 3261 §12.1)")
    return str(contacts[0].uri)


def _is_secure(request: Request, secure: bool | None) -> bool:
    if secure is not None:
        return secure
    try:
        return request.request_uri.scheme == "sips"
    except SipParseError:
        return False


def _strip_for_request_uri(route: str) -> str:
    """The URI of a route entry as a Request-URI (§12.2.1.1: drop what a Request-URI may not
    carry — URI headers and the ``method`` parameter)."""
    uri = parse_name_addr(route).uri
    if isinstance(uri, SipUri):
        params = {k: v for k, v in uri.params.items() if k.lower() != "method"}
        uri = SipUri(uri.scheme, uri.user, uri.password, uri.host, uri.port, params, [])
    return str(uri)


def _is_loose(route: str) -> bool:
    uri = parse_name_addr(route).uri
    return isinstance(uri, SipUri) and uri.param("lr") is not None


@dataclass(slots=True)
class Dialog:
    """One dialog's state (RFC 3261 §12.1).

    Attributes:
        call_id: the Call-ID.
        local_tag / remote_tag: the tags; ``""`` when the peer sent none (RFC 2543).
        local_seq / remote_seq: CSeq numbers; ``None`` while empty (§12.1.1: a UAS's local
            sequence number starts empty; a UAC's remote one does).
        local_uri / remote_uri: the URIs of From/To as used in this dialog's requests.
        remote_target: the peer's Contact URI; in-dialog requests go there.
        route_set: Record-Route entries as name-addrs, in the order requests use them
            (the UAS keeps the request's order, the UAC reverses the response's).
        secure: True when the dialog was set up over TLS with a SIPS Request-URI (§12.1.1).
        state: :class:`DialogState`.
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_seq: int | None
    remote_seq: int | None
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    secure: bool = False
    state: DialogState = DialogState.CONFIRMED

    # ---------------------------------------------------------------- constructors
    @staticmethod
    def _check_response(response: Response) -> str:
        if not 101 <= response.status <= 299:
            raise DialogError(f"a {response.status} response does not create a dialog")
        tag = response.to.tag
        if not tag:
            raise DialogError("response without To tag does not create a dialog (§12.1)")
        return tag

    @classmethod
    def from_uas(
        cls, request: Request, response: Response, *, secure: bool | None = None
    ) -> Dialog:
        """The dialog a UAS creates when it sends ``response`` (101-299 with a To tag) to the
        dialog-creating ``request`` (RFC 3261 §12.1.1).

        Route set: the request's Record-Route, in order. Remote target: the request's
        Contact. remote_seq: the request's CSeq; local_seq empty. ``secure`` defaults to
        "the Request-URI is SIPS" (pass it when the transport is known).

        Raises:
            DialogError: bad status, no To tag in the response, no Contact in the request.
            SipParseError: a malformed From/To/Call-ID/CSeq/Record-Route.
        """
        local_tag = cls._check_response(response)
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_seq=None,
            remote_seq=request.cseq.number,
            local_uri=str(request.to.uri),
            remote_uri=str(request.from_.uri),
            remote_target=_contact_uri(request),
            route_set=list(request.values("record-route")),
            secure=_is_secure(request, secure),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
        )

    @classmethod
    def from_uac(
        cls, request: Request, response: Response, *, secure: bool | None = None
    ) -> Dialog:
        """The dialog a UAC creates on receiving ``response`` (101-299 with a To tag) to its
        dialog-creating ``request`` (RFC 3261 §12.1.2).

        Route set: the response's Record-Route, reversed. Remote target: the response's
        Contact. local_seq: the request's CSeq; remote_seq empty.

        Raises:
            DialogError: bad status, no To tag, no Contact in the response.
            SipParseError: a malformed From/To/Call-ID/CSeq/Record-Route.
        """
        remote_tag = cls._check_response(response)
        return cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=remote_tag,
            local_seq=request.cseq.number,
            remote_seq=None,
            local_uri=str(request.from_.uri),
            remote_uri=str(request.to.uri),
            remote_target=_contact_uri(response),
            route_set=list(reversed(response.values("record-route"))),
            secure=_is_secure(request, secure),
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
        )

    # ---------------------------------------------------------------- identity
    @property
    def dialog_id(self) -> DialogId:
        """``(call_id, local_tag, remote_tag)`` (RFC 3261 §12)."""
        return (self.call_id, self.local_tag, self.remote_tag)

    # ---------------------------------------------------------------- UAC behaviour
    def create_request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """Build an in-dialog request (RFC 3261 §12.2.1.1). The caller adds the Via (with a
        fresh branch) and any other headers.

        To = remote URI + remote tag, From = local URI + local tag, Call-ID. CSeq: local
        sequence number + 1 (chosen at random if empty) and stored back — except ``ACK``
        (and CANCEL), which reuse the current number (the INVITE's, §13.2.2.4), or ``cseq``
        when given. Routing: with an empty route set the Request-URI is the remote target;
        if the first route has ``;lr`` (loose routing) the Request-URI is the remote target
        and Route the whole set; otherwise (strict routing) the Request-URI is the first
        route's URI and Route the rest followed by the remote target.

        Args:
            method: the method, e.g. ``"BYE"``, ``"INVITE"`` (re-INVITE), ``"ACK"``.
            cseq: an explicit CSeq number (for ACK: the number of the INVITE acknowledged).
            contact: a Contact value to add (required in target refresh requests, §12.2.1.1).
            body, content_type: an optional body.
            max_forwards: the Max-Forwards value.

        Raises:
            SipParseError: a route entry that does not parse.
        """
        if cseq is None:
            if method in ("ACK", "CANCEL"):
                if self.local_seq is None:
                    self.local_seq = _initial_cseq()
                cseq = self.local_seq
            else:
                cseq = (self.local_seq if self.local_seq is not None else _initial_cseq()) + 1
                self.local_seq = cseq
        elif method not in ("ACK", "CANCEL") and (self.local_seq is None or cseq > self.local_seq):
            self.local_seq = cseq
        routes = list(self.route_set)
        target = self.remote_target
        if routes and not _is_loose(routes[0]):
            request_uri = _strip_for_request_uri(routes[0])
            routes = [*routes[1:], f"<{target}>"]
        else:
            request_uri = target
        headers: list[tuple[str, str, str]] = [
            ("max-forwards", "Max-Forwards", str(max_forwards)),
        ]
        headers.extend(("route", "Route", r) for r in routes)
        from_ = f"<{self.local_uri}>" + (f";tag={self.local_tag}" if self.local_tag else "")
        to = f"<{self.remote_uri}>" + (f";tag={self.remote_tag}" if self.remote_tag else "")
        headers += [
            ("from", "From", from_),
            ("to", "To", to),
            ("call-id", "Call-ID", self.call_id),
            ("cseq", "CSeq", f"{cseq} {method}"),
        ]
        if contact is not None:
            headers.append(("contact", "Contact", contact))
        request = Request(method, request_uri, headers)
        request.set_body(body, content_type)
        return request

    def receive_response(self, request: Request, response: Response) -> None:
        """Update the dialog with a response to one of its own requests (UAC side).

        A 2xx to INVITE confirms an early dialog, and for an early dialog replaces the route
        set by the 2xx's Record-Route reversed (§13.2.2.4); a 2xx to a target refresh request
        replaces the remote target by its Contact (§12.2.1.2). Other responses change nothing.

        Raises:
            SipParseError: a malformed Contact or Record-Route.
        """
        if not 200 <= response.status <= 299:
            return
        if request.method == "INVITE" and self.state is DialogState.EARLY:
            self.state = DialogState.CONFIRMED
            self.route_set = list(reversed(response.values("record-route")))
        if request.method in TARGET_REFRESH and "contact" in response:
            self.update_remote_target(response)

    # ---------------------------------------------------------------- UAS behaviour
    def receive_request(self, request: Request) -> bool:
        """Check an in-dialog request's CSeq (RFC 3261 §12.2.2) and record it.

        Returns:
            ``False`` if the request is out of order (its CSeq number is lower than the remote
            sequence number): the TU answers ``500 Server Internal Error``. ``True``
            otherwise; the remote sequence number then becomes the request's (an empty one is
            set, a higher one advances it). ACK and CANCEL, which repeat the INVITE's number,
            are always accepted. The remote target is *not* changed here: call
            :meth:`update_remote_target` when a target refresh request is accepted.

        Raises:
            SipParseError: a malformed CSeq.
        """
        number = request.cseq.number
        if request.method in ("ACK", "CANCEL"):
            # They repeat the INVITE's number, may arrive after a later request, and cannot
            # be answered with a 500: never out of order.
            if self.remote_seq is None:
                self.remote_seq = number
            return True
        if self.remote_seq is not None and number < self.remote_seq:
            return False
        self.remote_seq = number
        return True

    def update_remote_target(self, message: Message) -> None:
        """Replace the remote target by the Contact of ``message`` (a target refresh request
        the TU accepts, or a 2xx to one; RFC 3261 §12.2). No Contact: unchanged.

        Raises:
            DialogError: a malformed Contact.
        """
        if "contact" in message:
            self.remote_target = _contact_uri(message)

    def matches(self, message: Message, *, incoming_request: bool) -> bool:
        """Whether ``message`` belongs to this dialog: Call-ID and both tags (RFC 3261 §12).
        For a request received by this UA the local tag is the To tag; for a response to
        one of this UA's requests it is the From tag."""
        try:
            key = DialogSet.key_for(message, incoming_request=incoming_request)
        except SipParseError:
            return False
        return key == self.dialog_id


class DialogSet:
    """A store of dialogs keyed by ``(call_id, local_tag, remote_tag)``.

    Args:
        max_dialogs: optional cap; :meth:`add` raises DialogError beyond it.
    """

    def __init__(self, max_dialogs: int | None = None) -> None:
        self._dialogs: dict[DialogId, Dialog] = {}
        self.max_dialogs = max_dialogs

    @staticmethod
    def key_for(message: Message, *, incoming_request: bool) -> DialogId:
        """The dialog ID a message refers to. For a request received from the peer:
        ``(Call-ID, To tag, From tag)``; for a response to (or a request sent by) this UA:
        ``(Call-ID, From tag, To tag)``. Missing tags are ``""``.

        Raises:
            SipParseError: a missing or malformed Call-ID, From or To.
        """
        from_tag = message.from_.tag or ""
        to_tag = message.to.tag or ""
        if incoming_request:
            return (message.call_id, to_tag, from_tag)
        return (message.call_id, from_tag, to_tag)

    def add(self, dialog: Dialog) -> Dialog:
        """Store ``dialog`` (replacing one with the same ID). Raises DialogError over the cap."""
        key = dialog.dialog_id
        if (
            self.max_dialogs is not None
            and key not in self._dialogs
            and len(self._dialogs) >= self.max_dialogs
        ):
            raise DialogError("too many dialogs")
        self._dialogs[key] = dialog
        return dialog

    def get(self, call_id: str, local_tag: str, remote_tag: str) -> Dialog | None:
        """The dialog with this ID, or ``None``."""
        return self._dialogs.get((call_id, local_tag, remote_tag))

    def find_for_request(self, request: Request) -> Dialog | None:
        """The dialog an incoming request belongs to (local tag = To tag), or ``None``
        (an in-dialog request matching none gets 481, RFC 3261 §12.2.2)."""
        try:
            return self._dialogs.get(self.key_for(request, incoming_request=True))
        except SipParseError:
            return None

    def find_for_response(self, response: Response) -> Dialog | None:
        """The dialog a response to this UA's request belongs to (local tag = From tag)."""
        try:
            return self._dialogs.get(self.key_for(response, incoming_request=False))
        except SipParseError:
            return None

    def remove(self, dialog: Dialog | DialogId) -> Dialog | None:
        """Remove a dialog (given itself or its ID); returns it, or ``None`` if absent."""
        key = dialog.dialog_id if isinstance(dialog, Dialog) else dialog
        return self._dialogs.pop(key, None)

    def __len__(self) -> int:
        return len(self._dialogs)

    def __iter__(self) -> Iterator[Dialog]:
        return iter(list(self._dialogs.values()))

    def __contains__(self, dialog: object) -> bool:
        if isinstance(dialog, Dialog):
            return self._dialogs.get(dialog.dialog_id) is dialog
        return dialog in self._dialogs
