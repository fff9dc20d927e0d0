"""The speaker port over GoBGP's gRPC API: routes in, routes and sessions out.

Every call answers or raises :class:`SpeakerError`: a route is announced
when ``AddPath`` returned, never "written into a pipe" (FastNetMon's lesson,
its issues #558 and #707). The API is a Unix socket (``speaker.api``), so
nothing but this host reaches it; calls carry a deadline, so a stuck
``gobgpd`` costs the caller seconds, not the loop.

Routes carry floodguard's tag (a large community) and their expiry (the
large community ``tag.asn:tag.function+1:<unix time>``), so what the speaker
holds can be listed, told apart from everything else it carries, and
withdrawn on its own when it expires (`floodguard speaker` does that while
the agent is dead). :func:`decode` turns a held route back into the
:class:`~agent.upstream.announce.Announcement` it was made from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .announce import Announcement, Match
from .stubs import load

# Flowspec component types (RFC 8955 §4.2.2) and operator bits.
DST, SRC, PROTO, PORT, DPORT, SPORT, ICMP_TYPE, ICMP_CODE, TCP_FLAGS, LENGTH, DSCP, FRAGMENT = range(1, 13)
END, AND = 0x80, 0x40
LT, GT, EQ = 0x04, 0x02, 0x01  # numeric
NOT, MATCH = 0x02, 0x01  # bitmask
IS_FRAGMENT = 0x02
BLACKHOLE = (65535, 666)
#: The unspecified next hop: GoBGP puts the session's own address in its place.
SELF_V4, SELF_V6 = "0.0.0." + "0", "::"
#: What the peer state names of GoBGP become in floodguard's output.
STATES = {0: "unknown", 1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm", 6: "established"}
DEFAULT_TIMEOUT = 3.0


class SpeakerError(Exception):
    """The speaker did not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class Route:
    """An announcement as sent: the route and its attributes."""

    announcement: Announcement
    expires: int  # Unix time
    communities: tuple[tuple[int, int], ...] = ()
    large: tuple[tuple[int, int, int], ...] = ()  # besides the tag and the expiry
    rate_bytes: float = 0.0  # flowspec traffic-rate in bytes/s; 0 = discard
    next_hop: str | None = None  # rtbh; None = the session's own address


@dataclass(frozen=True)
class Held:
    """A route of floodguard's the speaker holds: what it is (None if not ours to read) and when it expires."""

    announcement: Announcement | None
    expires: int | None
    raw: Any  # the API's Path, to withdraw exactly it


@dataclass(frozen=True)
class PeerStatus:
    address: str
    asn: int
    state: str
    since: float | None  # Unix time of the last state change to established, or of the last down
    admin_down: bool
    received: int = 0
    advertised: int = 0

    @property
    def up(self) -> bool:
        return self.state == "established"


class SpeakerPort(Protocol):
    """What the manager asks of a speaker (GoBGP here; an in-memory fake in unit tests)."""

    def add(self, route: Route) -> None: ...

    def delete(self, held: Held | Announcement) -> None: ...

    def held(self) -> list[Held]: ...

    def peers(self) -> list[PeerStatus]: ...


# --------------------------------------------------------------------------- encoding


def _pack(msg: Any) -> Any:
    from google.protobuf.any_pb2 import Any as PbAny

    out = PbAny()
    out.Pack(msg)
    return out


def _numeric(attr: Any, typ: int, rng: tuple[int, int]) -> Any:
    lo, hi = rng
    if lo == hi:
        items = [attr.FlowSpecComponentItem(op=END | EQ, value=lo)]
    else:
        items = [attr.FlowSpecComponentItem(op=GT | EQ, value=lo),
                 attr.FlowSpecComponentItem(op=END | AND | LT | EQ, value=hi)]
    return attr.FlowSpecComponent(type=typ, items=items)


def _bitmask(attr: Any, typ: int, mask: int, value: int) -> Any:
    items: list[Any] = []
    if value:
        items.append(attr.FlowSpecComponentItem(op=MATCH, value=value))  # every bit of value set
    clear = mask & ~value
    if clear:
        items.append(attr.FlowSpecComponentItem(op=(AND if items else 0) | NOT, value=clear))  # none of these
    items[-1].op |= END
    return attr.FlowSpecComponent(type=typ, items=items)


def family_of(api: Any, a: Announcement) -> Any:
    afi = api.Family.AFI_IP if a.version == 4 else api.Family.AFI_IP6
    safi = api.Family.SAFI_FLOW_SPEC_UNICAST if a.kind == "flowspec" else api.Family.SAFI_UNICAST
    return api.Family(afi=afi, safi=safi)


def nlri_of(attr: Any, a: Announcement) -> Any:
    if a.kind == "rtbh":
        return _pack(attr.IPAddressPrefix(prefix_len=a.dst.prefixlen, prefix=str(a.dst.network_address)))
    m = a.match
    rules = [_pack(attr.FlowSpecIPPrefix(type=DST, prefix_len=a.dst.prefixlen, prefix=str(a.dst.network_address)))]
    if m.proto is not None:
        rules.append(_pack(_numeric(attr, PROTO, (m.proto, m.proto))))
    if m.dport is not None:
        rules.append(_pack(_numeric(attr, DPORT, m.dport)))
    if m.sport is not None:
        rules.append(_pack(_numeric(attr, SPORT, m.sport)))
    if m.tcp_flags is not None:
        rules.append(_pack(_bitmask(attr, TCP_FLAGS, *m.tcp_flags)))
    if m.length is not None:
        rules.append(_pack(_numeric(attr, LENGTH, m.length)))
    if m.fragment:
        rules.append(_pack(_bitmask(attr, FRAGMENT, IS_FRAGMENT, IS_FRAGMENT)))
    return _pack(attr.FlowSpecNLRI(rules=rules))


def path_of(route: Route, tag: tuple[int, int, int], expiry_fn: tuple[int, int]) -> Any:
    api, attr, _ = load()
    a = route.announcement
    fam, nlri = family_of(api, a), nlri_of(attr, a)
    pattrs = [_pack(attr.OriginAttribute(origin=0))]
    if a.kind == "rtbh" and a.version == 4:
        pattrs.append(_pack(attr.NextHopAttribute(next_hop=route.next_hop or SELF_V4)))
    else:
        hop = route.next_hop if a.kind == "rtbh" and route.next_hop else (SELF_V4 if a.version == 4 else SELF_V6)
        pattrs.append(_pack(attr.MpReachNLRIAttribute(family=fam, next_hops=[hop], nlris=[nlri])))
    if a.kind == "flowspec":
        rate = attr.TrafficRateExtended(asn=0, rate=float(route.rate_bytes))
        pattrs.append(_pack(attr.ExtendedCommunitiesAttribute(communities=[_pack(rate)])))
    if route.communities:
        pattrs.append(_pack(attr.CommunitiesAttribute(communities=[hi << 16 | lo for hi, lo in route.communities])))
    large = [tag, (*expiry_fn, route.expires), *route.large]
    pattrs.append(_pack(attr.LargeCommunitiesAttribute(communities=[
        attr.LargeCommunity(global_admin=g, local_data1=d1, local_data2=d2) for g, d1, d2 in large])))
    return api.Path(nlri=nlri, family=fam, pattrs=pattrs)


# --------------------------------------------------------------------------- decoding


def _range(items: Sequence[Any]) -> tuple[int, int] | None:
    ops = [(it.op & ~(END | 0x30), it.value) for it in items]  # without end-of-list and length bits
    if len(ops) == 1 and ops[0][0] == EQ:
        return ops[0][1], ops[0][1]
    if len(ops) == 2 and ops[0][0] == GT | EQ and ops[1][0] == AND | LT | EQ:
        return ops[0][1], ops[1][1]
    return None


def _flags(items: Sequence[Any]) -> tuple[int, int] | None:
    value = clear = 0
    for i, it in enumerate(items):
        op = it.op & ~(END | 0x30)
        if i and not op & AND:
            return None  # an OR of terms: not a shape floodguard makes
        op &= ~AND
        if op == MATCH:
            value |= it.value
        elif op == NOT:
            clear |= it.value
        else:
            return None
    return value | clear, value


def _component(comp: Any, fields: dict[str, Any]) -> bool:
    """Add one component to the Match fields; False if floodguard never makes one like it."""
    name = {PROTO: "proto", DPORT: "dport", SPORT: "sport", LENGTH: "length"}.get(comp.type)
    if name is not None:
        rng = _range(comp.items)
        if rng is None or (name == "proto" and rng[0] != rng[1]):
            return False
        fields[name] = rng[0] if name == "proto" else rng
        return True
    if comp.type == TCP_FLAGS:
        fields["tcp_flags"] = _flags(comp.items)
        return fields["tcp_flags"] is not None
    if comp.type == FRAGMENT and _flags(comp.items) == (IS_FRAGMENT, IS_FRAGMENT):
        fields["fragment"] = True
        return True
    return False


def decode(path: Any) -> Announcement | None:
    """The announcement a path of floodguard's shape stands for; None if it has another shape."""
    api, attr, _ = load()
    fam = path.family
    if fam.safi == api.Family.SAFI_UNICAST:
        p = attr.IPAddressPrefix()
        if not path.nlri.Unpack(p):
            return None
        return Announcement("rtbh", ipaddress.ip_network(f"{p.prefix}/{p.prefix_len}"))
    if fam.safi != api.Family.SAFI_FLOW_SPEC_UNICAST:
        return None
    n = attr.FlowSpecNLRI()
    if not path.nlri.Unpack(n):
        return None
    dst = None
    fields: dict[str, Any] = {}
    for rule in n.rules:
        pfx = attr.FlowSpecIPPrefix()
        comp = attr.FlowSpecComponent()
        if rule.Unpack(pfx):
            if pfx.type != DST or pfx.offset:
                return None
            dst = ipaddress.ip_network(f"{pfx.prefix}/{pfx.prefix_len}")
        elif not (rule.Unpack(comp) and _component(comp, fields)):
            return None
    if dst is None:
        return None
    return Announcement("flowspec", dst, Match(**fields))


def large_communities(path: Any) -> list[tuple[int, int, int]]:
    _, attr, _ = load()
    out: list[tuple[int, int, int]] = []
    for pa in path.pattrs:
        lc = attr.LargeCommunitiesAttribute()
        if pa.Unpack(lc):
            out += [(c.global_admin, c.local_data1, c.local_data2) for c in lc.communities]
    return out


# --------------------------------------------------------------------------- the client


class GoBgp:
    """SpeakerPort over gobgpd's gRPC API on a Unix socket."""

    def __init__(self, api_path: str, tag: tuple[int, int, int], expiry_fn: tuple[int, int],
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        import grpc

        api, _, rpc = load()
        self._api = api
        self._grpc = grpc
        self.target = f"unix://{api_path}"
        self._channel = grpc.insecure_channel(self.target)
        self._stub = rpc.GobgpApiStub(self._channel)
        self._tag = tag
        self._expiry_fn = expiry_fn
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, fn: Any, request: Any) -> Any:
        try:
            return fn(request, timeout=self._timeout)
        except self._grpc.RpcError as e:
            code = e.code().name.lower() if hasattr(e, "code") else "error"
            detail = e.details() if hasattr(e, "details") else str(e)
            raise SpeakerError(f"{what} via {self.target}: {code}: {detail}") from None

    def _list(self, what: str, fn: Any, request: Any) -> list[Any]:
        try:
            return list(fn(request, timeout=self._timeout))
        except self._grpc.RpcError as e:
            code = e.code().name.lower() if hasattr(e, "code") else "error"
            detail = e.details() if hasattr(e, "details") else str(e)
            raise SpeakerError(f"{what} via {self.target}: {code}: {detail}") from None

    def ping(self) -> None:
        """Raises SpeakerError unless gobgpd answers with BGP started."""
        self._call("GetBgp", self._stub.GetBgp, self._api.GetBgpRequest())

    def add(self, route: Route) -> None:
        path = path_of(route, self._tag, self._expiry_fn)
        self._call(f"announce {route.announcement.key}", self._stub.AddPath,
                   self._api.AddPathRequest(table_type=self._api.GLOBAL, path=path))

    def delete(self, held: Held | Announcement) -> None:
        api = self._api
        if isinstance(held, Held):
            path, what = held.raw, held.announcement.key if held.announcement else "an unreadable route"
        else:
            _, attr, _ = load()
            # is_withdraw: gobgpd asks a route being added (not one withdrawn) for its next hop.
            path = api.Path(nlri=nlri_of(attr, held), family=family_of(api, held), is_withdraw=True)
            what = held.key
        self._call(f"withdraw {what}", self._stub.DeletePath,
                   api.DeletePathRequest(table_type=api.GLOBAL, family=path.family, path=path))

    def held(self) -> list[Held]:
        """Every locally originated route carrying floodguard's tag, in the four families."""
        api = self._api
        out: list[Held] = []
        g, f = self._expiry_fn
        for afi in (api.Family.AFI_IP, api.Family.AFI_IP6):
            for safi in (api.Family.SAFI_FLOW_SPEC_UNICAST, api.Family.SAFI_UNICAST):
                fam = api.Family(afi=afi, safi=safi)
                for resp in self._list("ListPath", self._stub.ListPath,
                                       api.ListPathRequest(table_type=api.GLOBAL, family=fam)):
                    for p in resp.destination.paths:
                        if p.neighbor_ip not in ("", "<nil>", SELF_V4, SELF_V6) or p.is_from_external:
                            continue
                        lcs = large_communities(p)
                        if self._tag not in lcs:
                            continue
                        expiry = next((d2 for gg, d1, d2 in lcs if (gg, d1) == (g, f)), None)
                        if not p.HasField("family"):
                            p.family.CopyFrom(fam)
                        out.append(Held(decode(p), expiry, p))
        return out

    def peers(self) -> list[PeerStatus]:
        out: list[PeerStatus] = []
        for resp in self._list("ListPeer", self._stub.ListPeer, self._api.ListPeerRequest()):
            p = resp.peer
            state = STATES.get(int(p.state.session_state), "unknown")
            t = p.timers.state
            since = t.uptime.seconds if state == "established" else t.downtime.seconds
            received = advertised = 0
            for af in p.afi_safis:
                received += int(af.state.received)
                advertised += int(af.state.advertised)
            out.append(PeerStatus(
                address=p.conf.neighbor_address, asn=int(p.conf.peer_asn), state=state,
                since=float(since) if since else None,
                admin_down=p.state.admin_state != self._api.PeerState.UP,
                received=received, advertised=advertised,
            ))
        return out


__all__ = ["BLACKHOLE", "STATES", "GoBgp", "Held", "PeerStatus", "Route", "SpeakerError", "SpeakerPort",
           "decode", "large_communities", "path_of"]
