"""The control socket's verbs: one table, each verb with typed, validated arguments.

A request is a verb and a JSON object of arguments. The table checks both
before anything runs — an unknown verb, an argument the verb does not take,
a missing one or a value of the wrong type is answered with one sentence —
and hands the handler a frozen dataclass, never the raw object. Handlers
run under the agent's lock (the socket serves each client on its own
thread).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import threading
import time
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from agent.contract import abi
from agent.contract.clock import NS, check_ttl, monotonic_ns
from agent.contract.keys import IPAddress, IPNetwork, Record, prefix_key
from agent.datapath.errors import CapacityError

from . import mapviews
from .api import RequestError
from .parts import Parts
from .state import Capture

log = structlog.get_logger()

_ORIGINS = tuple(o.label for o in abi.Origin)


# --------------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class Args:
    """Arguments of a verb: init fields are what a request may send; ``__post_init__`` checks values."""


@dataclass(frozen=True)
class NoArgs(Args):
    pass


@dataclass(frozen=True)
class BansArgs(Args):
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.origin is not None and self.origin not in _ORIGINS:
            raise RequestError(f"origin must be one of {', '.join(_ORIGINS)}, not {self.origin!r}")


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise RequestError(
                f"{text!r} is not an IP address or prefix (e.g. 198.51.100.7 or 2001:db8::/48)"
            ) from None
        raise RequestError(f"{text} has host bits set; did you mean {loose}?") from None


#: The longest operator reason kept, in characters: it is shown in tables and saved with every ban.
MAX_REASON = 200


@dataclass(frozen=True)
class BanArgs(Args):
    prefix: str
    ttl: float | None = None
    reason: str | None = None
    force: bool = False  # ban a default route or infrastructure all the same
    network: IPNetwork = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", _network(self.prefix))
        if self.ttl is not None:
            try:
                check_ttl(self.ttl)
            except ValueError as e:
                raise RequestError(str(e)) from None
        if self.reason is not None and len(self.reason) > MAX_REASON:
            raise RequestError(f"--reason is {len(self.reason)} characters long, at most {MAX_REASON} are kept: "
                               f"shorten it")


@dataclass(frozen=True)
class UnbanArgs(Args):
    prefix: str
    network: IPNetwork = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", _network(self.prefix))


@dataclass(frozen=True)
class ExplainArgs(Args):
    ip: str
    address: IPAddress = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "address", ipaddress.ip_address(self.ip))
        except ValueError:
            raise RequestError(f"{self.ip!r} is not an IP address") from None


@dataclass(frozen=True)
class AttacksArgs(Args):
    recent: int = 20

    def __post_init__(self) -> None:
        if self.recent < 0:
            raise RequestError(f"recent must be 0 or more, not {self.recent}")


@dataclass(frozen=True)
class TopArgs(Args):
    n: int = 10

    def __post_init__(self) -> None:
        if self.n < 1:
            raise RequestError(f"n must be 1 or more, not {self.n}")


A = TypeVar("A", bound=Args)

_KINDS: dict[type, str] = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number" if math.isfinite(value) else "NaN or infinity"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _value(verb: str, name: str, hint: object, value: object) -> object:
    """``value`` as the type ``hint`` names (str, int, float, bool, or one of them | None)."""
    options = typing.get_args(hint) or (hint,)
    if value is None and type(None) in options:
        return None
    want = next(t for t in options if t is not type(None))
    if isinstance(value, bool):
        if want is bool:
            return value
    elif isinstance(value, int | float) and want in (int, float):
        if want is float and math.isfinite(value):
            return float(value)
        if want is int and isinstance(value, int):
            return value
    elif want is str and isinstance(value, str):
        return value
    raise RequestError(f"{verb}: {name} must be {_KINDS[want]}, not {_json_kind(value)}")


def parse_args(verb: str, args: type[A], raw: Mapping[str, object]) -> A:
    """The verb's arguments from a request's JSON object, or RequestError saying what is wrong."""
    fields = [f for f in dataclasses.fields(args) if f.init]
    names = [f.name for f in fields]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        given = ", ".join(repr(u) for u in unknown)
        if not names:
            raise RequestError(f"{verb} takes no arguments, not {given}")
        raise RequestError(f"{verb} does not take {given}; it takes {', '.join(names)}")
    missing = [f.name for f in fields if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RequestError(f"{verb} needs {', '.join(missing)}")
    hints = typing.get_type_hints(args)
    values = {name: _value(verb, name, hints[name], value) for name, value in raw.items()}
    return args(**values)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Verb:
    """One verb: its arguments, its handler (already bound to them by ``of``) and a line of help."""

    name: str
    args: type[Args]
    summary: str
    bind: Callable[[Mapping[str, object]], Callable[[], object]]

    @classmethod
    def of(cls, name: str, args: type[A], handler: Callable[[A], object], summary: str) -> Verb:
        def bind(raw: Mapping[str, object]) -> Callable[[], object]:
            parsed = parse_args(name, args, raw)
            return lambda: handler(parsed)

        return cls(name, args, summary, bind)


class VerbTable:
    """Serves requests: validates them, then runs the handler under ``lock``."""

    def __init__(self, verbs: Iterable[Verb], lock: threading.RLock) -> None:
        self.verbs = {v.name: v for v in verbs}
        self._lock = lock

    def serve(self, verb: str, raw: Mapping[str, object]) -> object:
        found = self.verbs.get(verb)
        if found is None:
            raise RequestError(f"unknown verb {verb!r}: the agent answers {', '.join(sorted(self.verbs))}")
        run = found.bind(raw)
        with self._lock:
            return run()


# --------------------------------------------------------------------------- the handlers


class Actions(Protocol):
    """What only the supervisor can do."""

    def reload(self, trigger: str) -> dict[str, object]: ...

    def detach(self) -> dict[str, object]: ...


class Verbs:
    """The handlers, over the running parts."""

    def __init__(self, parts: Parts, actions: Actions, capture: Callable[[], Capture]) -> None:
        """``capture``: the state to save after an operator's ban or unban (called under the lock)."""
        self._parts = parts
        self._actions = actions
        self._capture = capture
        self._index = mapviews.PolicyIndex()

    def table(self, lock: threading.RLock) -> VerbTable:
        return VerbTable([
            Verb.of("status", NoArgs, self.status, "the program, interfaces, policy, traffic and bans"),
            Verb.of("bans", BansArgs, self.bans, "bans in force, with origin, ttl and reason"),
            Verb.of("ban", BanArgs, self.ban, "ban a prefix (operator origin)"),
            Verb.of("unban", UnbanArgs, self.unban, "remove an operator or automatic ban"),
            Verb.of("explain", ExplainArgs, self.explain, "everything the program decides about one address"),
            Verb.of("attacks", AttacksArgs, self.attacks, "active and recent attacks"),
            Verb.of("top", TopArgs, self.top, "busiest destinations, sources and groups"),
            Verb.of("upstream", NoArgs, self.upstream, "BGP sessions and Flowspec/RTBH announcements"),
            Verb.of("reload", NoArgs, self.reload, "load, validate and apply the policy again"),
            Verb.of("detach", NoArgs, self.detach, "remove the program and its pins, then stop"),
        ], lock)

    def status(self, _: NoArgs) -> dict[str, object]:
        p = self._parts
        runtime, pol = p.runtime, p.runtime.policy
        return {
            "uptime_seconds": round(time.time() - p.started_at, 1),
            "program": {"id": p.program.id, "tag": p.program.tag, "pin_dir": p.pin_dir,
                        "build_seconds": round(p.program.build_seconds, 2), "abi": abi.ABI_VERSION},
            "interfaces": p.interfaces.status(),
            "policy": {
                "path": str(runtime.path),
                "loaded_at": runtime.loaded_at,
                "mode": pol.mode if pol else None,
                "summary": str(pol.summary()) if pol else None,
                "reloads_ok": runtime.reloads_ok,
                "reloads_failed": runtime.reloads_failed,
                "last_errors": runtime.last_errors,
            },
            "rates": p.throughput.rates.summary(),
            "bans": p.port.addresses.ban_counts(monotonic_ns()),
            "attacks_active": len(p.controller.attacks(active=True)),
            "detection": p.controller.status(),
        }

    def bans(self, a: BansArgs) -> list[dict[str, object]]:
        p = self._parts
        return mapviews.list_bans(p.port, self._index.entries(p.runtime.policy), p.reasons, a.origin, monotonic_ns())

    def ban(self, a: BanArgs) -> dict[str, object]:
        p = self._parts
        table, net, key = p.port.addresses, a.network, prefix_key(a.network)
        if not a.force:
            self._refuse_dangerous(net)
        now = monotonic_ns()
        expires = now + int(a.ttl * NS) if a.ttl else 0
        rec: Record = (expires, now, abi.SRC_BAN, p.reasons.id_of(a.reason))
        table.set_record(key, abi.SRC_BAN, abi.Origin.OPERATOR, rec)
        try:
            table.commit(now)  # the map write: a packet sent after we answer is dropped
        except CapacityError as e:
            # The table undid the edit: the ban is neither listed nor saved.
            raise RequestError(f"{net} is not banned: {e}") from None
        p.store.save_now(self._capture())
        warn = None
        if table.effective(key, now).flags & abi.SRC_ALLOW:
            warn = f"{net} is allowlisted: the allowlist wins, this ban has no effect while it is"
        log.info("ban_added", prefix=str(net), origin="operator", ttl=a.ttl, reason=a.reason)
        return {"prefix": str(net), "ttl_seconds": a.ttl, "warning": warn}

    def _refuse_dangerous(self, net: IPNetwork) -> None:
        """A typo here cuts everyone off, the operator included: ask for --force."""
        if net.prefixlen == 0:
            raise RequestError(f"{net} is every address: banning it cuts off all traffic, your own session "
                               f"included; add --force if you really mean it")
        policy = self._parts.runtime.policy
        infra = policy.infrastructure.prefixes if policy is not None else ()
        first, last = int(net.network_address), int(net.broadcast_address)
        hit = next((e for e in infra if e.version == net.version and e.address <= last and first <= e.last), None)
        if hit is not None:
            where = f" ({hit.source})" if hit.source else ""
            raise RequestError(f"{net} overlaps the infrastructure prefix {hit}{where}: banning it can cut the "
                               f"gateway off its own network; add --force if you really mean it")

    def unban(self, a: UnbanArgs) -> dict[str, object]:
        p = self._parts
        table, net, key = p.port.addresses, a.network, prefix_key(a.network)
        removed = []
        for o in (abi.Origin.OPERATOR, abi.Origin.AUTO):
            if table.get_record(key, abi.SRC_BAN, o) is not None:
                table.set_record(key, abi.SRC_BAN, o, None)
                removed.append(o.label)
        if not removed:
            if table.get_record(key, abi.SRC_BAN, abi.Origin.POLICY) is not None:
                entry = self._index.entries(p.runtime.policy).get(key)
                where = f" ({entry.source})" if entry is not None else ""
                raise RequestError(f"{net} is banned by the policy's deny list{where}: remove it there and reload")
            raise RequestError(f"{net} is not banned (`floodguard bans` lists the bans)")
        table.commit(monotonic_ns())
        p.store.save_now(self._capture())
        log.info("ban_removed", prefix=str(net), origins=removed)
        return {"prefix": str(net), "removed": removed}

    def explain(self, a: ExplainArgs) -> dict[str, object]:
        p = self._parts
        policy, compiled = p.runtime.policy, p.runtime.compiled
        assert policy is not None and compiled is not None  # the agent started with a policy
        return mapviews.explain(a.address, p.port, policy, compiled, self._index.entries(policy), p.reasons,
                             monotonic_ns())

    def attacks(self, a: AttacksArgs) -> dict[str, object]:
        controller = self._parts.controller
        active = [x.to_dict() for x in controller.attacks(active=True)]
        ids = {x["id"] for x in active}
        recent = [x.to_dict() for x in controller.attacks(active=False, recent=a.recent)]
        records = [*active, *(x for x in recent if x["id"] not in ids)]
        upstream = self._parts.upstream
        if upstream is not None and upstream.enabled:
            # What was announced (or refused) upstream for each attack, next to its mitigations.
            views = upstream.for_attacks([str(x["id"]) for x in records])
            for x in records:
                x["upstream"] = views.get(str(x["id"]), {"announcements": [], "refused": []})
        return {"active": active, "recent": [x for x in recent if x["id"] not in ids]}

    def upstream(self, _: NoArgs) -> dict[str, object]:
        upstream = self._parts.upstream
        if upstream is None:
            return {"enabled": False, "sessions": [], "announcements": [], "refused": {}}
        return upstream.snapshot()

    def top(self, a: TopArgs) -> dict[str, object]:
        out: dict[str, object] = self._parts.controller.top(a.n)
        out["rates"] = self._parts.throughput.rates.summary()
        return out

    def reload(self, _: NoArgs) -> dict[str, object]:
        return self._actions.reload("control socket")

    def detach(self, _: NoArgs) -> dict[str, object]:
        return self._actions.detach()


__all__ = [
    "Actions", "Args", "AttacksArgs", "BanArgs", "BansArgs", "ExplainArgs", "NoArgs", "TopArgs", "UnbanArgs",
    "Verb", "VerbTable", "Verbs", "parse_args",
]
