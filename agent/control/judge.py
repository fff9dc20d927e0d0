"""Attack or surge, and which lever: the decision that keeps legitimate users at full service.

A series over its threshold is a candidate. Whether it is an attack, and
what may be done about it, rests on evidence the gateway can see; every
verdict carries that evidence, so the record says why:

* **handshake completion** (TCP): a surge of real clients brings, with each
  new connection's SYN, the ACKs and data of that connection; a SYN flood
  from forged addresses brings SYNs only. The gateway counts both classes
  per group, so completion is the surplus of non-SYN TCP over the surplus
  of SYNs, scaled by the group's learned packets-per-SYN;
* **the shape against the group's learned profile** (`profile`): answers
  from a reflection port, fragments, an ICMP type or a port that the
  group's calm traffic hardly has are hostile by shape, whoever sends them;
* **source concentration and persistence** (the samples): a few sources far
  above the heaviest legitimate source seen are the flood; many sources
  that rarely repeat, over enough samples, are forged;
* **distress**: the target's link full (its ``uplink`` capacity) or drops
  on the gateway's interface towards it.

Levers, each with its possible collateral written into the record:

* ``syn_auth`` — forged SYN floods: unverified SYNs are answered with a
  challenge; a new real client's first connection waits for one SYN
  retransmission (~1 s), then its address is verified;
* ``shape`` — a drop rule on a shape the profile does not have (collateral:
  the profile's share of that shape), or an aggregate limit at the shape's
  learned normal rate with headroom (legitimate traffic of that shape keeps
  up to that rate);
* ``sources`` — the few abusive sources, each limited to the heaviest
  legitimate source seen times headroom, for this target and class only
  (collateral: those sources' own traffic above that rate);
* ``none`` — no local lever is safe (a forged ACK flood to a port real
  clients use); it is recorded, and escalated when the target is hurting.

A **surge** — real clients completing handshakes, or many real sources in
a shape the group normally has, with the target not hurting — is recorded
with its evidence and never mitigated.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.contract.abi import TrafficClass
from agent.contract.keys import IPAddress

from .profile import GroupProfile, headroom_rate
from .samples import MIN_SPOOF_SAMPLES, SourceStats, SpoofVerdict
from .vectors import EPHEMERAL_LOW, Classification, Vector

C = TrafficClass

#: Completion at or above this: the surplus comes with its handshakes (real clients). For other TCP
#: the surplus must also not outweigh what its SYNs explain by more than REAL_IMBALANCE (an ACK flood
#: riding on a SYN flood is not a crowd).
REAL_COMPLETION = 0.5
REAL_IMBALANCE = 2.0
#: Below this share of SYN samples from senders seen completing, the SYNs come from nobody real.
MIN_ACKED_SHARE = 0.1
#: When less than this share of the SYN surplus is delivered, SYN authentication is answering it: the
#: senders are verified one by one (a crowd) or never (a flood), which takes up to CHALLENGED_SETTLE_S.
CHALLENGED_SHARE = 0.1
CHALLENGED_SETTLE_S = 3.0
#: A TCP surplus is judged on its handshakes only once it is this old: a real client whose first SYN
#: was answered with a challenge (or lost to a full queue) retransmits it after one second, and its
#: ACKs follow that retransmission. Before, a TCP candidate without other evidence waits, as a surge.
SETTLE_S = 1.5
#: Packets of other TCP per SYN assumed before the group's calm traffic has taught one.
DEFAULT_PACKETS_PER_SYN = 3.0
#: A shape with less than this share of the group's calm samples of its class is not in its profile.
ABSENT_SHARE = 0.01
#: Calm samples of a class before its profile is trusted to say what is absent.
MIN_PROFILE_SAMPLES = 200.0
#: Sources above their per-source limit (among the heaviest this many) that carry this share of the
#: samples are the flood: they, and nobody else, are limited.
ABUSIVE_LOOKED_AT = 100
ABUSIVE_SHARE = 0.8
#: Samples needed before source concentration is judged.
MIN_SOURCE_SAMPLES = 20
#: Without distress, a few sources are a flood only this far above their per-source limit (a busy
#: real client of a kind the group has not seen yet is not); with distress, above the limit is enough.
ABUSIVE_MULTIPLE = 5.0
#: A source of other TCP sampled sending at least one SYN per this many other packets opens its
#: connections as real clients do (a new connection per request is about 5): it is a busy client (a
#: CGNAT address, a proxy), never limited as a flood. A raw ACK flood has no SYNs.
OTHER_PER_SYN_MAX = 50
#: Floors of a per-source limit (pps), per class: well above any one real client of a small site.
SOURCE_FLOOR_PPS = {
    C.TCP_SYN: 200, C.TCP_OTHER: 5_000, C.UDP: 2_000, C.ICMP: 100, C.FRAGMENT: 500, C.OTHER: 500,
}
#: An aggregate limit is the shape's learned normal rate times its headroom, and at least this.
SHAPE_FLOOR_PPS = 100
#: A target's distress counts against a class only if that class carries at least this share of the
#: group's traffic (packets or bytes): a reflection filling the link does not make the real clients'
#: TCP, a few percent of it, the cause.
DISTRESS_SHARE = 0.25


class Kind(enum.StrEnum):
    ATTACK = "attack"
    SURGE = "surge"


class Lever(enum.StrEnum):
    SYN_AUTH = "syn_auth"
    SHAPE = "shape"
    SOURCES = "sources"
    NONE = "none"


@dataclass(frozen=True)
class Distress:
    """Whether the protected side hurts: its link near capacity, or drops towards it."""

    hurting: bool = False
    why: str | None = None
    drops_ps: float = 0.0  # packets dropped per second on the way to the group (interface and qdisc)
    load: float | None = None  # offered bits or packets over the group's uplink capacity

    def to_dict(self) -> dict[str, object]:
        return {"hurting": self.hurting, "why": self.why, "drops_per_s": round(self.drops_ps, 1),
                "link_load": None if self.load is None else round(self.load, 3)}


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    lever: Lever
    why: str
    evidence: dict[str, object] = field(default_factory=dict)
    source_pps: int = 0  # sources: each source's limit
    shape_pps: int = 0  # shape: 0 = drop, else the aggregate limit
    legit_pps: float = 0.0  # the learned legitimate rate the mitigation can touch
    collateral: str = ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": str(self.kind), "lever": str(self.lever), "why": self.why,
                                  "collateral": self.collateral, "legit_pps_at_risk": round(self.legit_pps, 1)}
        if self.lever is Lever.SOURCES:
            out["source_limit_pps"] = self.source_pps
        if self.lever is Lever.SHAPE:
            out["shape_limit_pps"] = self.shape_pps or None
        out["evidence"] = self.evidence
        return out


@dataclass(frozen=True)
class Inputs:
    """What one verdict rests on, gathered by the tracker each tick."""

    cls: TrafficClass
    shape: Classification
    sources: SourceStats
    spoof: SpoofVerdict
    profile: GroupProfile
    class_pps: float  # the attacked class's rate now (the attack's scope)
    normal_pps: float  # its learned calm mean
    syn_pps: float  # the group's SYN and other-TCP rates, now and learned
    syn_normal: float
    other_pps: float
    other_normal: float
    distress: Distress
    syn_auth: str  # the group's setting: off | on_attack | always
    age_s: float = math.inf  # how long the candidate has lasted
    acks_from: Mapping[IPAddress, int] = field(default_factory=dict)  # other-TCP samples of the SYN senders
    syns_from: Mapping[IPAddress, int] = field(default_factory=dict)  # SYN samples of the other-TCP senders
    acked_share: float | None = None  # SYN samples whose source also sent other TCP lately (None: too few)
    syn_undelivered_pps: float = 0.0  # the group's SYNs not delivered now: answered with a challenge, or dropped
    class_share: float | None = None  # this class's share of the group's traffic now (packets or bytes)
    source_headroom: float = 10.0  # the group's mitigation.source_headroom
    shape_headroom: float = 3.0  # the group's mitigation.shape_headroom


def completion(i: Inputs) -> float | None:
    """The surplus of other TCP over what the surplus of SYNs brings in real use (None: no TCP surplus).

    1.0 is a crowd of real clients: every extra SYN came with its connection's
    ACKs and data. Near 0 the extra SYNs came alone (a SYN flood); far above 1
    the extra ACKs came without SYNs (an ACK flood)."""
    if i.cls not in (C.TCP_SYN, C.TCP_OTHER):
        return None
    per_syn = i.other_normal / i.syn_normal if i.syn_normal >= 1.0 and i.other_normal > 0 else DEFAULT_PACKETS_PER_SYN
    # Only SYNs that reached the server can bring ACKs: a SYN answered with a challenge is not one.
    extra_syn = max(i.syn_pps - i.syn_undelivered_pps - i.syn_normal, 0.0)
    extra_other = max(i.other_pps - i.other_normal, 0.0)
    surplus = max(i.syn_pps - i.syn_normal, 0.0) if i.cls is C.TCP_SYN else extra_other
    if surplus <= 0:
        return None
    if i.cls is C.TCP_SYN and extra_syn < CHALLENGED_SHARE * surplus:
        return None  # the surplus is answered, not delivered: its handshakes cannot show (see judge)
    if extra_syn <= 0:
        return math.inf
    return extra_other / (extra_syn * per_syn)


def real_clients(cls: TrafficClass, done: float | None, acked_share: float | None = None) -> bool:
    """Whether the TCP surplus comes with its handshakes.

    For SYNs the samples say it source by source when there are enough of them
    (``acked_share``: the share of sampled SYNs whose sender was also sampled
    sending ACKs or data — real clients do, forged and raw-socket floods do
    not); otherwise, and for other TCP, the rates do (`completion`)."""
    if cls is C.TCP_SYN:
        if acked_share is not None and acked_share >= REAL_COMPLETION:
            return True
        # A crowd of many sources is sampled too sparsely for each sender to show its ACKs; the
        # rates then tell. But a forged SYN flood dressed up with a forged ACK flood would pass the
        # rates: its SYN senders are never seen sending anything else.
        dressed = acked_share is not None and acked_share < MIN_ACKED_SHARE
        return done is not None and done >= REAL_COMPLETION and not dressed
    return done is not None and REAL_COMPLETION <= done <= REAL_IMBALANCE


def judge(i: Inputs) -> Verdict:
    """The verdict on one candidate; see the module docstring."""
    if i.distress.hurting and i.class_share is not None and i.class_share < DISTRESS_SHARE:
        # The target hurts, but not from this class: judged as if it did not (its own evidence decides).
        i = dataclasses.replace(i, distress=Distress(
            False, f"the target hurts ({i.distress.why}), but {i.cls.label} is only {i.class_share:.0%} of its "
                   "traffic: not the cause", i.distress.drops_ps, i.distress.load))
    ev: dict[str, object] = {
        "samples": i.sources.samples,
        "distinct_sources": i.sources.distinct,
        "top_sources_share": round(i.sources.top_share, 3),
        "spoofing": i.spoof.why,
        "class_pps": round(i.class_pps),
        "normal_pps": round(i.normal_pps),
        "distress": i.distress.to_dict(),
    }
    if i.class_share is not None:
        ev["class_share_of_traffic"] = round(i.class_share, 3)
    done = completion(i)
    if i.cls in (C.TCP_SYN, C.TCP_OTHER):
        ev["tcp_pps"] = {"syn": round(i.syn_pps), "syn_normal": round(i.syn_normal), "other": round(i.other_pps),
                         "other_normal": round(i.other_normal)}
    if done is not None:
        ev["handshake_completion"] = round(done, 3) if math.isfinite(done) else "no SYNs"
    if i.acked_share is not None:
        ev["syn_senders_seen_completing"] = round(i.acked_share, 3)
    heavy = i.profile.heavy_source_pps(i.cls)
    ev["heaviest_legit_source_pps"] = round(heavy)
    source_limit = headroom_rate(heavy, i.source_headroom, SOURCE_FLOOR_PPS.get(i.cls, 500))

    # 1. TCP whose surplus brings its handshakes: real clients, however many and however busy.
    if real_clients(i.cls, done, i.acked_share):
        how = (f"{i.acked_share:.0%} of the sampled SYNs are from senders seen completing handshakes"
               if i.cls is C.TCP_SYN and i.acked_share is not None else f"completion {done:.2f}")
        return _surge(f"real clients: the extra {i.cls.label} comes with its handshakes ({how})", ev, i)
    if done is not None and i.age_s < SETTLE_S and not i.distress.hurting:
        # A crowd whose first SYNs were challenged (or queued) brings its ACKs a retransmission later;
        # sparse samples of a crowd look forged. A target that hurts does not wait.
        return _surge(f"{i.cls.label} surplus of {i.age_s:.1f} s: its handshakes are judged after one SYN "
                      f"retransmission time ({SETTLE_S:g} s)", ev, i)

    if i.cls is C.TCP_SYN and i.syn_pps <= i.syn_normal and not i.distress.hurting:
        # Nothing above the normal now (a surge fading, or slowed by a flood of another class): nothing
        # here says forged, and an attack once judged stays one (the tracker keeps it).
        return _surge("no SYN surplus over this group's normal now", ev, i)

    # 2. A shape the group's calm traffic hardly has: hostile by shape, whoever sends it. A class that
    #    was silent in calm says little about which of its shapes real clients use: when a few real
    #    sources carry the flood, limiting them (3) spares a service that just started being used.
    few = None if i.spoof.spoofed else _abusive(i, source_limit)
    absent = _absent_shape(i, quiet_ok=few is None)
    if absent is not None:
        what, share = absent
        legit = share * i.normal_pps
        return Verdict(Kind.ATTACK, Lever.SHAPE, f"{what}: {share:.1%} of this group's calm {i.cls.label}",
                       ev, shape_pps=0, legit_pps=legit,
                       collateral=f"legitimate {what}: about {legit:.0f} pps in the learned profile")

    # 3. Real sources far above the heaviest legitimate one carry the flood: limit those, nobody else.
    if few is not None:
        ev["abusive_sources"] = few
        return Verdict(Kind.ATTACK, Lever.SOURCES,
                       f"real sources each far above {source_limit} pps carry the flood (the heaviest: "
                       f"{few[0]['source']} at {few[0]['pps']} pps)", ev, source_pps=source_limit,
                       collateral=f"each source's {i.cls.label} to this target above {source_limit} pps "
                                  f"(the heaviest legitimate source seen: {heavy:.0f} pps)")

    # 4. SYNs that do not complete their handshakes, from whoever: a SYN flood. Its sources need not
    #    look forged (a flood from real addresses that never answer is one too).
    if i.cls is C.TCP_SYN and done is None and i.syn_pps > i.syn_normal and i.age_s < CHALLENGED_SETTLE_S \
            and not i.distress.hurting:
        return _surge(f"SYNs answered by challenges ({i.syn_undelivered_pps:.0f} pps): real senders verify and "
                      f"come back, forged ones never do; judged after {CHALLENGED_SETTLE_S:g} s", ev, i)
    if i.cls is C.TCP_SYN:
        why = (i.spoof.why if i.spoof.spoofed else f"handshake completion {done:.2f}" if done is not None
               else "its senders are not seen completing handshakes")
        if i.syn_auth == "off":
            return Verdict(Kind.ATTACK, Lever.NONE, f"SYN flood ({why}), SYN authentication is off for this "
                           "group; SYNs are never rate-limited in aggregate", ev)
        return Verdict(Kind.ATTACK, Lever.SYN_AUTH, f"SYN flood ({why})", ev,
                       collateral="a new client's first SYN is answered with a challenge: its first "
                                  "connection waits for one retransmission (~1 s), then its address is verified")

    # 5. Forged sources in a shape the group has: limited at its normal rate with headroom, but only
    #    when the target hurts (a crowd of real sources, sparsely sampled, can look forged too).
    if i.spoof.spoofed and i.distress.hurting:
        limited = _shape_limit(i)
        if limited is not None:
            what, normal, pps = limited
            return Verdict(Kind.ATTACK, Lever.SHAPE, f"forged {what}, a shape this group has: limited to "
                           f"{pps} pps ({i.shape_headroom:g} x its normal {normal:.0f} pps)", ev, shape_pps=pps,
                           legit_pps=normal,
                           collateral=f"legitimate {what} keeps up to {pps} pps, {i.shape_headroom:g}x its normal")
        return _no_lever(f"forged {i.cls.label} in a shape real clients use", ev)

    # 6. Many sources in a shape the group has.
    if i.distress.hurting:
        return _no_lever(f"many sources in this group's usual shape and the target hurts ({i.distress.why})", ev)
    return _surge("many sources in this group's usual shape, and the target is not hurting", ev, i)


def _surge(why: str, ev: dict[str, object], i: Inputs) -> Verdict:
    if i.distress.hurting:
        why += f"; the target hurts ({i.distress.why}): upstream help is the only lever that spares them"
    return Verdict(Kind.SURGE, Lever.NONE, why, ev)


def _no_lever(why: str, ev: dict[str, object]) -> Verdict:
    return Verdict(Kind.ATTACK, Lever.NONE, why + ": no local mitigation spares legitimate traffic", ev,
                   collateral="none (nothing is enforced)")


def _absent_shape(i: Inputs, quiet_ok: bool = True) -> tuple[str, float] | None:
    """The flood's shape and the share the profile has of it, when that share is negligible.

    ``quiet_ok``: a class all but silent in calm counts as a profile without the flood's destination
    port. Answers from a reflection port to a group that sent no UDP in calm are answers to requests it
    never made, whoever the reflectors are: for them silence is always enough."""
    p, cls, shape = i.profile, i.cls, i.shape
    trusted = p.evidence(cls) >= MIN_PROFILE_SAMPLES
    silent = i.normal_pps * 100 <= i.class_pps  # the class itself was all but silent in calm
    quiet = quiet_ok and silent
    if cls is C.UDP:
        if shape.vector is Vector.UDP_REFLECTION and shape.sport is not None:
            share = p.share(cls, "sports", shape.sport)
            if share < ABSENT_SHARE and (trusted or silent):
                return f"UDP answers from port {shape.sport} ({shape.service})", share
        if shape.dport is not None:
            share = p.share(cls, "dports", shape.dport)
            if share < ABSENT_SHARE and (trusted or quiet):
                return f"UDP to port {shape.dport}", share
        if shape.dport_range is not None:
            share = p.share(cls, "dports", shape.dport_range[0], shape.dport_range[1])
            if share < ABSENT_SHARE and (trusted or quiet):
                return f"UDP to ports {EPHEMERAL_LOW}-65535", share
        return None
    if cls in (C.FRAGMENT, C.ICMP, C.OTHER) and quiet:
        return f"{cls.label} traffic", i.normal_pps / i.class_pps if i.class_pps > 0 else 0.0
    if cls is C.ICMP and shape.icmp_type is not None:
        share = p.share(cls, "sports", shape.icmp_type)
        if share < ABSENT_SHARE and trusted:
            return f"ICMP type {shape.icmp_type}", share
    if cls is C.OTHER and shape.proto is not None:
        share = p.share(cls, "protos", shape.proto)
        if share < ABSENT_SHARE and trusted:
            return f"IP protocol {shape.proto}", share
    if cls is C.TCP_OTHER and shape.dport is not None:
        share = p.share(cls, "dports", shape.dport)
        if share < ABSENT_SHARE and trusted:
            return f"TCP to port {shape.dport}", share
    return None


def _shape_limit(i: Inputs) -> tuple[str, float, int] | None:
    """A shape the group has, limited at its learned normal rate with headroom: (what, normal, limit)."""
    cls, shape, p = i.cls, i.shape, i.profile
    if cls is C.TCP_SYN or i.normal_pps <= 0:
        return None  # never an aggregate limit on SYNs
    share = 1.0
    what = f"{cls.label}"
    if cls is C.UDP and shape.vector is Vector.UDP_REFLECTION and shape.sport is not None:
        share, what = p.share(cls, "sports", shape.sport), f"UDP from port {shape.sport}"
    elif cls in (C.UDP, C.TCP_OTHER) and shape.dport is not None:
        share, what = p.share(cls, "dports", shape.dport), f"{cls.label} to port {shape.dport}"
    elif cls is C.TCP_OTHER:
        return None  # never a blanket limit on all ACKs to a host
    elif cls is C.ICMP and shape.icmp_type is not None:
        share, what = p.share(cls, "sports", shape.icmp_type), f"ICMP type {shape.icmp_type}"
    normal = share * i.normal_pps
    if normal <= 0 or not math.isfinite(normal):
        return None
    return what, normal, headroom_rate(normal, i.shape_headroom, SHAPE_FLOOR_PPS)


def _abusive(i: Inputs, source_limit: int) -> list[dict[str, object]] | None:
    """The real sources far above the per-source limit, when together they are the flood."""
    s = i.sources
    if s.samples < MIN_SOURCE_SAMPLES:
        return None
    bar = source_limit * (1.0 if i.distress.hurting else ABUSIVE_MULTIPLE)
    heavy = [(src, pps, n) for src, pps, n in s.top if pps > bar]
    if i.cls is C.TCP_SYN:
        # A SYN sender whose ACKs and data are sampled at least as often as its SYNs completes its
        # handshakes: a busy real client (a CGNAT address, a proxy), not a flood, however fast.
        heavy = [(src, pps, n) for src, pps, n in heavy if i.acks_from.get(src, 0) < n]
    if i.cls is C.TCP_OTHER:
        # distress or not: limiting a source that opens its connections as real clients do is the very
        # harm the product must not cause (a flood of another class can fill the link meanwhile)
        heavy = [(src, pps, n) for src, pps, n in heavy if i.syns_from.get(src, 0) * OTHER_PER_SYN_MAX < n]
    if not heavy or sum(n for _, _, n in heavy) < ABUSIVE_SHARE * s.samples:
        return None
    return [{"source": str(src), "pps": round(pps)} for src, pps, _n in heavy[:10]]


__all__ = ["MIN_SPOOF_SAMPLES", "Distress", "Inputs", "Kind", "Lever", "Verdict", "completion", "judge"]
