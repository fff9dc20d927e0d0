"""The ban step: persistent abusive sources of an attack, banned within the policy's caps.

Runs every tick while an attack's ban step is armed and its sources are not
spoofed. Each candidate (see `samples.AttackSamples.persistent`) is checked
against what must never be banned (`bans.why_not_ban`) and against
``max_bans`` of its group and in total; each refusal is noted once on the
record. A reload that protects a banned prefix lifts its ban.
"""

from __future__ import annotations

from agent.contract.clock import NS
from agent.policy.model import Step

from .attacks import Attack
from .bans import BanBook, ban_prefix, why_not_ban
from .journal import Journal
from .port import ControlPort
from .settings import GroupView, Settings


class BanStep:
    """Writes automatic bans through the port and keeps the book of them."""

    def __init__(self, port: ControlPort, book: BanBook, journal: Journal) -> None:
        self._port = port
        self.book = book
        self._journal = journal

    def run(self, a: Attack, now: int, view: GroupView, settings: Settings) -> None:
        s, m, book = settings, view.mitigation, self.book
        in_group, in_all = book.count(a.gid), book.count()
        done: list[dict[str, object]] = []
        for src, rate in a.evidence.samples.persistent():
            net = ban_prefix(src, s.ipv6_ban_len)
            if book.is_banned(net):
                continue
            why = why_not_ban(net, s)
            if why is not None:
                self._journal.skip_once(a, now, Step.BAN, f"never banned: {net} is {why}")
                continue
            if in_group >= m.max_bans or in_all >= s.mitigation.max_bans:
                self._journal.skip_once(a, now, Step.BAN,
                                        f"max_bans reached ({min(m.max_bans, s.mitigation.max_bans)})")
                break
            ttl, previous = book.ttl_s(net, m)
            expires = now + int(ttl * NS)
            try:
                self._port.ban(net, expires, view.monitor,
                               f"auto: {a.label} on {a.target} ({a.id}), ~{rate:.0f} pps")
            except Exception as e:  # noqa: BLE001 — a full map refuses one ban, never the rest of the tick
                # The port left nothing behind (commits are all or nothing): skip this
                # source, say why on the record, and let rules and SYN auth go on.
                self._journal.skip_once(a, now, Step.BAN, f"ban of {net} failed: {e}")
                continue
            book.add(net, a.gid, expires, now)
            a.history.record_ban(str(net))
            in_group += 1
            in_all += 1
            done.append({"prefix": str(net), "ttl_s": round(ttl, 1), "previous_bans": previous, "pps": round(rate)})
        if done:
            self._journal.bans_applied(a, now, done, view.monitor)

    def unban_newly_protected(self, settings: Settings) -> None:
        """Lift automatic bans the policy in force now protects (allowlisted, infrastructure, assets)."""
        for net in list(self.book.active):
            why = why_not_ban(net, settings)
            if why is not None:
                self._port.unban(net)
                self.book.remove(net)
                self._journal.unbanned(str(net), why)
