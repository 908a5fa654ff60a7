"""Request inspection before a service runs (RFC 3261 §8.2.1 to §8.2.3, §16.3).

The order, and why (RFC 4475 §3.3 expects these statuses):

1. Request-URI scheme: not ``sip``/``sips`` → ``416`` (§8.2.2.1; RFC 4475 §3.3.2, §3.3.3).
2. Max-Forwards: ``0`` on a request this element would forward → ``483`` (§16.3 step 3;
   RFC 4475 §3.3.11). An OPTIONS addressed to this FE is answered instead.
3. Proxy-Require and Require with an extension we do not support → ``420`` with
   ``Unsupported`` (§16.3 step 5, §8.2.2.3; RFC 4475 §3.3.5). Not applied to ACK and CANCEL.
4. A body whose Content-Type we do not understand → ``415`` with ``Accept`` (§8.2.3;
   RFC 4475 §3.3.6).
5. An INVITE whose ``Accept`` excludes ``application/sdp`` → ``406`` (RFC 4475 §3.3.15).

Method inspection (405/501, §8.2.1) runs after these in the dispatcher, so that a torture
request for a method this FE does not implement yet still gets the status RFC 4475 names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipstack.message import Request, Response, make_response
from sipstack.uri import SipUri

__all__ = ["InspectionPolicy", "inspect_request"]

UNDERSTOOD_BODIES = frozenset(
    {
        "application/sdp",
        "application/pidf+xml",
        "application/reginfo+xml",
        "application/rlmi+xml",
        "application/resource-lists+xml",
        "application/xpidf+xml",
        "application/msrtc-event-categories+xml",
        "application/msrtc-category-publish+xml",
        "application/msrtc-presence-batchsub+xml",
        "application/simple-message-summary",
        "application/vnd.registrar.heartbeat+json",  # pool heartbeats (registrar.pool.heartbeat)
        "message/sipfrag",
        "multipart/mixed",
        "multipart/related",
        "multipart/alternative",
        "text/plain",
    }
)


@dataclass(slots=True)
class InspectionPolicy:
    """What this element supports and which Request-URIs are its own.

    Attributes:
        supported: option tags we support (RFC 3261 §19.2), lower case.
        local_hosts: host names and IPs that address this FE itself (lower case); requests to
            other hosts, the FE's SIP domains included, would be forwarded (to a user's
            bindings), so they get 483 at Max-Forwards 0.
    """

    supported: frozenset[str] = frozenset({"path", "outbound", "gruu"})
    local_hosts: set[str] = field(default_factory=set)

    def is_local(self, req: Request) -> bool:
        """True if the Request-URI names this FE itself."""
        uri = req.request_uri
        return isinstance(uri, SipUri) and uri.host.lower().strip("[]") in self.local_hosts


def inspect_request(req: Request, policy: InspectionPolicy) -> Response | None:
    """Return the error response the request must get before any service sees it, or ``None``.

    ``req`` must have passed :func:`sipstack.parser.validate_request`.
    """
    uri = req.request_uri
    if type(uri) is not SipUri and not isinstance(uri, SipUri):
        return make_response(req, 416)
    method = req.method
    if req.max_forwards == 0 and not policy.is_local(req) and method != "ACK":
        return make_response(req, 483)
    if method not in ("ACK", "CANCEL"):
        # Most requests have neither header (one look-up each after validate_request).
        if "require" in req or "proxy-require" in req:
            unsupported = [
                tag
                for name in ("proxy-require", "require")
                for tag in req.tokens(name)
                if tag.lower() not in policy.supported
            ]
            if unsupported:
                resp = make_response(req, 420)
                resp.add("Unsupported", ", ".join(dict.fromkeys(unsupported)))
                return resp
        if req.body:
            ctype = req.content_type
            if ctype is not None and ctype not in UNDERSTOOD_BODIES:
                resp = make_response(req, 415)
                resp.add("Accept", ", ".join(sorted(UNDERSTOOD_BODIES)))
                return resp
        if method == "INVITE" and "accept" in req:
            accepted = {v.split(";", 1)[0].strip().lower() for v in req.values("accept")}
            if accepted and not accepted & {"application/sdp", "application/*", "*/*"}:
                resp = make_response(req, 406)
                resp.add("Accept", "application/sdp")
                return resp
    return None
