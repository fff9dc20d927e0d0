"""`floodguard <verb>`: the command line.

Each verb is a small function that imports what it needs when it runs, so
`floodguard --help` and `floodguard check` start fast and work without root.
Errors an operator can cause (bad arguments, a dead daemon, a missing
permission) end in one sentence on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from agent.datapath.errors import DatapathError

EPILOG = """\
examples:
  floodguard check /etc/floodguard/policy.yaml     validate a policy (exit 1 on errors), like nginx -t
  floodguard run -c /etc/floodguard/policy.yaml    run the agent (systemd does this)
  floodguard status                                interfaces, XDP mode, policy, rates
  floodguard ban 198.51.100.7 --ttl 10m --reason "scanner"
  floodguard explain 198.51.100.7                  what applies to this source, and its counters
  floodguard attacks                               active and recent attacks with their mitigations
  floodguard upstream                              BGP sessions, Flowspec/RTBH announcements and expiries
  floodguard bench datapath --json                 ns per packet against a trivial XDP_DROP
  floodguard schema > policy.schema.json           JSON Schema for editors

docs: README.md, docs/policy.md, docs/metrics.md, docs/runbook.md
"""

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """An error the operator can fix; printed as one sentence."""


def _check(args: argparse.Namespace) -> int:
    from agent.policy.check import run_check

    return run_check(args.file, sys.stdout, sys.stderr)


def _schema(args: argparse.Namespace) -> int:  # noqa: ARG001 — every verb handler takes the parsed arguments
    import json

    from agent.policy.check import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _require_lab_extra(verb: str) -> None:
    """The demo and the benchmarks need the lab extra (pyproject.toml); without it, one sentence says how to get it.

    Checked against the installed distribution's own requirements, before a
    run starts: the demo would otherwise find matplotlib missing only when it
    draws its timeline, a minute in. A source tree that is not installed has
    nothing to check against and runs as it is.
    """
    import re
    from importlib import metadata

    try:
        requires = metadata.requires("floodguard") or []
    except metadata.PackageNotFoundError:
        return
    missing = []
    for req in requires:
        spec, _, marker = req.partition(";")
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name is None or not re.search(r"""extra\s*==\s*["']lab["']""", marker):
            continue
        try:
            metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:
            missing.append(name.group(0))
    if missing:
        raise CliError(f"{verb} needs the lab extra, which is not installed ({', '.join(missing)} missing): "
                       f"pip install 'floodguard[lab]' (make {verb} installs it)")


def _bench(args: argparse.Namespace) -> int:
    _require_lab_extra("bench")
    rest = list(args.rest)
    if args.what == "datapath":
        from agent.bench import datapath

        return int(datapath.main(rest))
    if args.what == "prefixes":
        from agent.bench import prefixes

        return int(prefixes.main(rest))
    if args.what == "policy":
        from agent.bench import policy

        return policy.main(rest)
    if args.what == "detection":
        from agent.bench import detection

        return detection.main(rest)
    if args.what == "synauth":
        from agent.bench import synauth

        return synauth.main(rest)
    if args.what == "e2e":
        from agent.bench import e2e

        return int(e2e.main(rest))
    if args.what == "upstream":
        from agent.bench import upstream

        return upstream.main(rest)
    if args.what == "collateral":
        from agent.bench import collateral

        return collateral.main(rest)
    raise CliError(f"unknown benchmark {args.what!r}: choose datapath, prefixes, policy, detection, synauth, e2e, "
                   "upstream or collateral")


DEFAULT_POLICY = "/etc/floodguard/policy.yaml"
DEFAULT_SOCKET = "/run/floodguard/control.sock"


def _socket_path(args: argparse.Namespace) -> str:
    """--socket, else the policy's control.socket, else the default."""
    if getattr(args, "socket", None):
        return str(args.socket)
    policy = getattr(args, "config", None) or DEFAULT_POLICY
    try:
        from agent.policy import load_policy

        result = load_policy(policy)
        if result.policy is not None:
            return str(result.policy.control.socket)
    except OSError:
        pass
    return DEFAULT_SOCKET


def _call(args: argparse.Namespace, verb: str, **kw: object) -> object:
    from agent.daemon.api import ClientError, RequestError, call

    try:
        return call(_socket_path(args), verb, {k: v for k, v in kw.items() if v is not None})
    except (ClientError, RequestError) as e:
        raise CliError(str(e)) from None


def _print_json(obj: object) -> None:
    import json

    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip())


def _ttl(seconds: object) -> str:
    if seconds is None:
        return "permanent"
    s = float(seconds)  # type: ignore[arg-type]
    if s >= 86400:
        return f"{s / 86400:.1f}d"
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.0f}m"
    return f"{s:.0f}s"


def _rate(pps: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if pps >= div:
            return f"{pps / div:.1f}{unit}"
    return f"{pps:.0f}"


def _run(args: argparse.Namespace) -> int:
    from agent import daemon
    from agent.datapath.errors import DatapathError

    try:
        return daemon.main(args.config, args.pin_root)
    except daemon.StartupError as e:
        raise CliError(str(e)) from None
    except DatapathError as e:
        raise CliError(str(e)) from None


def _status(args: argparse.Namespace) -> int:
    st = _call(args, "status")
    if args.json:
        _print_json(st)
        return 0
    assert isinstance(st, dict)
    pol = st["policy"]
    print(f"floodguard: up {_ttl(st['uptime_seconds'])}, program {st['program']['id']} "
          f"(abi v{st['program']['abi']}, {st['program']['pin_dir']})")
    print(f"policy: {pol['path']} — {pol['summary']}; mode {pol['mode']}; "
          f"reloads {pol['reloads_ok']} ok, {pol['reloads_failed']} failed")
    for err in pol.get("last_errors") or []:
        print(f"  last reload error: {err}")
    rows = [[i["name"], str(i["ifindex"] or "-"), i["mode"], i["requested"],
             "yes" if i["attached"] else f"no ({i['error'] or 'waiting'})"] for i in st["interfaces"]]
    _table(rows, ["INTERFACE", "IFINDEX", "XDP MODE", "REQUESTED", "ATTACHED"])
    r = st["rates"]
    by = ", ".join(f"{k} {_rate(v)}" for k, v in sorted(r["pps_by_reason"].items(), key=lambda kv: -kv[1]))
    print(f"traffic: {_rate(r['pps_in'])} pps, {_rate(r['bps_in'])}bit/s in" + (f" ({by})" if by else ""))
    b = st["bans"]
    print(f"bans: {b.get('policy', 0)} policy, {b.get('operator', 0)} operator, {b.get('auto', 0)} automatic; "
          f"attacks active: {st['attacks_active']}")
    return 0


def _bans(args: argparse.Namespace) -> int:
    bans = _call(args, "bans", origin=args.origin)
    if args.json:
        _print_json(bans)
        return 0
    assert isinstance(bans, list)
    rows = [[b["prefix"], b["origin"], _ttl(b["ttl_seconds"]), "monitor" if b["monitor"] else "enforce",
             b["reason"] or "-"] for b in bans]
    _table(rows, ["PREFIX", "ORIGIN", "TTL", "MODE", "REASON"])
    print(f"{len(bans)} ban{'s' if len(bans) != 1 else ''}")
    return 0


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    from agent.contract.clock import check_ttl
    from agent.policy._units import parse_duration

    try:
        return check_ttl(float(parse_duration(text)), f"--ttl {text}")
    except ValueError as e:
        raise CliError(str(e) if str(e).startswith("--ttl") else f"--ttl {text}: {e}") from None


def _ban(args: argparse.Namespace) -> int:
    res = _call(args, "ban", prefix=args.prefix, ttl=_duration(args.ttl), reason=args.reason,
                force=args.force or None)  # sent only when given: an older agent does not know it
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    print(f"banned {res['prefix']} ({_ttl(res['ttl_seconds'])})")
    if res.get("warning"):
        print(f"warning: {res['warning']}", file=sys.stderr)
    return 0


def _unban(args: argparse.Namespace) -> int:
    res = _call(args, "unban", prefix=args.prefix)
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    print(f"unbanned {res['prefix']} ({', '.join(res['removed'])} ban removed)")
    return 0


def _explain(args: argparse.Namespace) -> int:
    res = _call(args, "explain", ip=args.ip)
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    print(f"{res['ip']}: {res['verdict']}")
    for e in res["entries"]:
        state = "active" if e["active"] else "expired"
        mon = ", monitor only" if e["monitor"] else ""
        print(f"  {e['kind']} {e['prefix']} by {e['origin']} ({state}, {_ttl(e['ttl_seconds'])}{mon}): "
              f"{e['reason'] or '-'}")
    for p in res["infrastructure"]:
        print(f"  infrastructure {p}: never banned automatically")
    d = res["as_destination"]
    if d:
        print(f"  protected: group {d['group']} ({d['prefix']}){', limits tightened' if d['tightened'] else ''}")
        for cls, lim in d["per_source_limits"].items():
            if lim:
                print(f"    per-source limit {cls}: " + ", ".join(f"{k} {v:,.0f}" for k, v in lim.items()))
        for cls, c in (d["counters"] or {}).items():
            print(f"    received {cls}: {c['packets']:,} packets, {c['dropped']:,} dropped")
    for b in res["source_buckets"]:
        state = "over its limit" if b["over_limit"] else "within its limit"
        print(f"  as a source to {b['group']} ({b['class']}): {state}")
    return 0


def _attacks(args: argparse.Namespace) -> int:
    res = _call(args, "attacks", recent=args.recent)
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    for title, rows in (("active", res["active"]), ("recent", res["recent"])):
        print(f"{title} attacks: {len(rows)}")
        if not rows:
            continue
        table = []
        for a in rows:
            target = a["target"]["host"] or ", ".join(a["target"]["prefixes"][:2]) or a["group"]
            vector = a["vector"] + (f"/{a['service']}" if a.get("service") else "")
            steps = ", ".join(dict.fromkeys(m["step"] for m in a["mitigations"] if m["action"] == "applied")) or "-"
            flags = " ".join(f for f, on in (("spoofed", a["spoofed"]), ("escalated", a["escalated"]),
                                             ("monitor", a["monitor"])) if on)
            ttm = a["time_to_mitigate_s"]
            table.append([a["id"], a["group"], target, vector, _rate(a["peak_pps"]) + " pps",
                          f"{a['dropped_packets']:,}", "-" if ttm is None else f"{ttm:.1f}s",
                          f"{a['bans']}", steps, a["started_at"][11:19], flags or "-"])
        _table(table, ["ID", "GROUP", "TARGET", "VECTOR", "PEAK", "DROPPED", "MITIGATED IN", "BANS",
                       "MITIGATIONS", "START", "NOTES"])
    return 0


def _top(args: argparse.Namespace) -> int:
    import time

    def frame() -> dict[str, object]:
        res = _call(args, "top", n=args.n)
        assert isinstance(res, dict)
        return res

    if args.json:
        _print_json(frame())
        return 0
    try:
        while True:
            res = frame()
            r = res["rates"]
            assert isinstance(r, dict)
            out = [(f"floodguard top — {time.strftime('%H:%M:%S')} — in {_rate(r['pps_in'])} pps, "
                   f"{_rate(r['bps_in'])}bit/s")]
            out.append("")
            dst = res["destinations"]
            assert isinstance(dst, list)
            out.append(f"{'DESTINATION':40} {'GROUP':16} {'PPS':>9} {'DROPPED/S':>10}")
            out += [f"{d['destination']:40} {d['group']:16} {_rate(d['pps']):>9} {_rate(d['dropped_pps']):>10}"
                    for d in dst]
            out.append("")
            src = res["sources"]
            assert isinstance(src, list)
            out.append(f"{'SOURCE (sampled)':40} {'GROUP':16} {'PPS':>9}")
            out += [f"{x['source']:40} {x['group']:16} {_rate(x['pps']):>9}" for x in src]
            if args.once:
                print("\n".join(out))
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(out) + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _reload(args: argparse.Namespace) -> int:
    res = _call(args, "reload")
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    for w in res["warnings"]:
        print(w, file=sys.stderr)
    if not res["ok"]:
        for e in res["errors"]:
            print(e, file=sys.stderr)
        print("reload rejected: the previous policy keeps running", file=sys.stderr)
        return 1
    print(f"policy reloaded: {res['prefixes_changed']} prefixes changed in {res['seconds']} s")
    return 0


def _detach(args: argparse.Namespace) -> int:
    from agent.daemon.api import AgentNotRunningError, ClientError, RequestError, call
    from agent.daemon.instance import holder, lock_path

    path = _socket_path(args)
    try:
        res = call(path, "detach")
    except AgentNotRunningError:
        # Removing pins under a live agent leaves it writing maps nothing enforces: ask its lock first.
        pid = holder(lock_path(path))
        if pid is not None:
            raise CliError(f"floodguard is still running (pid {pid or 'unknown'}) but nothing answers on {path}: "
                           f"nothing was removed; stop it (`systemctl stop floodguard`), then detach again") from None
        # No daemon: remove the program from the interfaces and the pins directly.
        from agent import daemon

        res = daemon.detach_everything(args.config if args.config else None, args.pin_root, args.interface or [])
    except ClientError as e:
        raise CliError(f"{e}: the agent still runs, so nothing was removed; try again, or stop it "
                       f"(`systemctl stop floodguard`) and detach again") from None
    except RequestError as e:
        raise CliError(str(e)) from None
    if args.json:
        _print_json(res)
        return 0
    for r in res["interfaces"]:
        print(f"{r['interface']}: {'detached' if r['detached'] else 'not detached: ' + r.get('error', '')}")
    pins = res["pins_removed"]
    print(f"pins removed: {pins if isinstance(pins, str) else ', '.join(pins) or 'none'}")
    return 0


def _speaker(args: argparse.Namespace) -> int:
    from agent.upstream import speaker

    return speaker.main(args.config, args.gobgpd_config)


def _upstream(args: argparse.Namespace) -> int:
    res = _call(args, "upstream")
    if args.json:
        _print_json(res)
        return 0
    assert isinstance(res, dict)
    if not res.get("enabled"):
        print("upstream: not configured (no upstream block in the policy)")
        return 0
    sp = res["speaker"]
    print(f"speaker: {sp['api']} ({'answering' if sp['up'] else 'NOT answering'})"
          + ("; monitor mode: nothing is announced" if res.get("monitor") else ""))
    _table([[s["name"], s["address"], str(s["asn"]), s["state"], s["since"] or "-", str(s["advertised"])]
            for s in res["sessions"]], ["PEER", "ADDRESS", "ASN", "STATE", "SINCE", "ADVERTISED"])
    rows = [[a["kind"], a["key"].split(" ", 1)[1], ",".join(a["attack_ids"]) or "-", a["state"],
             _ttl(a["age_s"]), _ttl(a["expires_in_s"])] for a in res["announcements"]]
    print()
    _table(rows, ["KIND", "ROUTE", "ATTACKS", "STATE", "AGE", "EXPIRES IN"])
    print(f"{len(rows)} announcement{'s' if len(rows) != 1 else ''}")
    refused = res.get("refused") or {}
    if refused:
        print("refused: " + ", ".join(f"{k} {n}" for k, n in refused.items()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    _require_lab_extra("demo")
    from agent.lab import demo

    return demo.main(["--png", args.png] + (["--short"] if args.short else []))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="floodguard",
        description="Edge DDoS mitigation: an XDP program drops floods at line rate; this agent "
        "turns a YAML policy into its maps, detects attacks and mitigates them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="verb", metavar="<verb>")

    c = sub.add_parser("check", help="validate a policy file (exit 1 on errors)",
                       description="Validate a policy and everything it includes, like nginx -t: "
                       "errors and warnings with file:line:column, then a one-line summary.")
    c.add_argument("file", help="policy file, e.g. /etc/floodguard/policy.yaml")
    c.set_defaults(func=_check)

    s = sub.add_parser("schema", help="print the policy's JSON Schema (for editors)")
    s.set_defaults(func=_schema)

    from agent.datapath.loader import DEFAULT_PIN_ROOT

    r = sub.add_parser("run", help="run the agent (systemd runs this)",
                       description="Load the policy, build and attach the XDP program (reusing pinned state), "
                       "run the control loop; SIGHUP or a changed policy file reloads, SIGTERM stops and leaves "
                       "the program attached.")
    r.add_argument("-c", "--config", default=DEFAULT_POLICY, help=f"policy file (default {DEFAULT_POLICY})")
    r.add_argument("--pin-root", default=DEFAULT_PIN_ROOT,
                   help=f"bpffs directory for pins (default {DEFAULT_PIN_ROOT})")
    r.set_defaults(func=_run)

    def client(name: str, help_text: str, func: Handler, description: str = "") -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=description or help_text)
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.add_argument("--socket", help=f"control socket (default: the policy's control.socket, {DEFAULT_SOCKET})")
        c.add_argument("-c", "--config", help=f"policy file to read the socket path from (default {DEFAULT_POLICY})")
        c.set_defaults(func=func)
        return c

    client("status", "interfaces and XDP mode, policy, uptime, rates", _status)
    c = client("bans", "list bans with remaining TTL, origin and reason", _bans)
    c.add_argument("--origin", choices=["policy", "operator", "auto"], help="only bans of this origin")
    c = client("ban", "ban a source address or prefix now", _ban,
               "Ban PREFIX (an address or a prefix) as the operator. Returns once the ban is in the kernel.")
    c.add_argument("prefix", help="e.g. 198.51.100.7 or 198.51.100.0/24 or 2001:db8::/48")
    c.add_argument("--ttl", help="how long, e.g. 30s, 10m, 2h, 1d (default: permanent)")
    c.add_argument("--reason", help="why, shown by `floodguard bans` (at most 200 characters)")
    c.add_argument("--force", action="store_true",
                   help="ban even 0.0.0.0/0, ::/0 or a prefix overlapping the policy's infrastructure")
    c = client("unban", "remove an operator or automatic ban", _unban)
    c.add_argument("prefix", help="exactly as banned, e.g. 198.51.100.7/32")
    c = client("explain", "what applies to an address, and its counters", _explain)
    c.add_argument("ip", help="an IPv4 or IPv6 address")
    c = client("attacks", "active and recent attacks, with their mitigations", _attacks)
    c.add_argument("--recent", type=int, default=20, help="how many ended attacks to show (default 20)")
    c = client("top", "top destinations and sources by rate, refreshing like top", _top)
    c.add_argument("-n", type=int, default=10, help="rows per table (default 10)")
    c.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    c.add_argument("--once", action="store_true", help="print one frame and exit")
    client("reload", "reload the policy now (like SIGHUP); exit 1 if it is rejected", _reload)
    c = client("detach", "remove the program from every interface and its pins", _detach,
               "Remove floodguard's XDP program from its interfaces and delete its pins. With a running agent "
               "the agent does it and stops; without one, it is done directly.")
    c.add_argument("--pin-root", default=DEFAULT_PIN_ROOT, help="bpffs directory of the pins")
    c.add_argument("--interface", action="append", help="interface to detach from (default: the policy's, "
                   "else every interface running floodguard)")

    client("upstream", "BGP sessions and the Flowspec/RTBH announcements, with attack, age and expiry",
           _upstream)
    sp = sub.add_parser("speaker", help="run gobgpd configured from the policy (floodguard-speaker.service)",
                        description="Write gobgpd's configuration from the policy's upstream block, run gobgpd "
                        "with its API on a Unix socket, withdraw announcements whose expiry passed; SIGHUP "
                        "applies a changed peer list.")
    sp.add_argument("-c", "--config", default=DEFAULT_POLICY, help=f"policy file (default {DEFAULT_POLICY})")
    sp.add_argument("--gobgpd-config", help="where to write gobgpd's configuration "
                    "(default /run/floodguard-speaker/gobgpd.json)")
    sp.set_defaults(func=_speaker)

    d = sub.add_parser("demo", help="build a lab, play attacks at it, show them mitigated (needs root)",
                       description="Build a lab of network namespaces, run floodguard on its gateway, play a DNS "
                       "reflection flood and a spoofed SYN flood at its servers while legitimate clients use "
                       "them, show it live, then summarise and draw a PNG timeline. Removes the lab at the end.",
                       epilog="examples:\n  floodguard demo\n  floodguard demo --png /tmp/timeline.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--png", default="floodguard-demo.png", help="where to write the timeline (default %(default)s)")
    d.add_argument("--short", action="store_true", help="a 30-second story instead of 75 seconds")
    d.set_defaults(func=_demo)

    b = sub.add_parser("bench", help="measure: datapath, prefixes, policy, detection, synauth, e2e, upstream, "
                       "collateral",
                       description="Benchmarks print ratios measured in one run. "
                       "`floodguard bench datapath --help` shows each one's options.",
                       add_help=False)
    b.add_argument("what", choices=["datapath", "prefixes", "policy", "detection", "synauth", "e2e", "upstream",
                                    "collateral"],
                   help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (--json, --help, ...)")
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if args.verb != "run":
        # Library events (the lab, the loader) are for the agent's journal; a
        # command's standard output is its result (tables, JSON).
        from agent import log

        log.configure(level="warning", fmt="console", stream=sys.stderr)
    try:
        rc: int = args.func(args)
        return rc
    except (CliError, DatapathError) as e:
        print(f"floodguard: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
