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


def _schema(args: argparse.Namespace) -> int:
    import json

    from agent.policy.check import json_schema

    json.dump(json_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _bench(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if args.what == "datapath":
        from agent.bench import datapath  # type: ignore[attr-defined,unused-ignore]

        return int(datapath.main(rest))
    if args.what == "prefixes":
        from agent.bench import prefixes  # type: ignore[attr-defined,unused-ignore]

        return int(prefixes.main(rest))
    if args.what == "policy":
        from agent.bench import policy

        return policy.main(rest)
    raise CliError(f"unknown benchmark {args.what!r}: choose datapath, prefixes or policy")


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

    b = sub.add_parser("bench", help="measure: datapath (ns/packet), prefixes (lookup structures), policy",
                       description="Benchmarks print ratios measured in one run. "
                       "`floodguard bench datapath --help` shows each one's options.",
                       add_help=False)
    b.add_argument("what", choices=["datapath", "prefixes", "policy"], help="which benchmark")
    b.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (--json, --help, ...)")
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
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
