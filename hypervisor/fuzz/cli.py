"""``python -m hypervisor.fuzz``: run a campaign, or replay one stream.

Exit status 1 if any stream failed (so ``make fuzz`` fails), 0 otherwise, 2 for bad
arguments (argparse's own).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

from .campaign import DEFAULT_TECHNIQUES, campaign, run_worker
from .replay import replay
from .run import DEFAULT_BUDGET, DEFAULT_TIMEOUT_S


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hypervisor.fuzz",
                                description="Run random instruction streams under each technique; "
                                            "report VMM exceptions, aborts, hangs and budget overruns.")
    p.add_argument("--seed", type=lambda s: int(s, 0), default=1)
    p.add_argument("--count", type=int, default=1000, help="streams per technique")
    p.add_argument("--start", type=int, default=0, help="first stream index")
    p.add_argument("--technique", default=",".join(DEFAULT_TECHNIQUES),
                   help="comma-separated techniques (default: native,trap)")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="guest instructions per stream")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="wall-clock seconds per stream")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--replay", metavar="SEED:INDEX", help="disassemble and run one stream")
    p.add_argument("--bisect", action="store_true",
                   help="with --replay: find the guest instruction where the failure starts (child processes)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    techniques = [t for t in args.technique.split(",") if t]
    from ..techniques import IN_PROGRESS, TECHNIQUES
    unknown = [t for t in techniques if t not in TECHNIQUES and t not in IN_PROGRESS]
    if unknown or not techniques:
        p.error(f"unknown technique {unknown[0] if unknown else '(none)'} (choose from {', '.join(TECHNIQUES)})")
    if args.worker:
        return run_worker(args.seed, techniques[0], args.start, args.count, args.budget, args.timeout)
    if args.replay:
        if not re.fullmatch(r"(0x[0-9a-fA-F]+|\d+):\d+", args.replay):
            p.error("--replay takes SEED:INDEX, as a failure report prints it")
        return replay(args.replay, techniques, args.budget, args.timeout, bisect=args.bisect)
    summary = campaign(args.seed, args.count, techniques, args.budget, args.timeout, args.workers,
                       progress=not args.quiet, start=args.start)
    if args.json:
        print(summary.text(), file=sys.stderr)
        print(json.dumps(summary.as_json()))
    else:
        print(summary.text())
    return 1 if summary.failures else 0

