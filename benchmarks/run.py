"""What each technique costs: the benchmark guests and two micro-benchmarks, timed side by side.

For every guest in benchmarks/guests/ and every technique in ``TECHNIQUES`` (plus two
runs of the same image on a bare Unicorn, see ``raw.py``) we take ``--repeats`` wall-time
samples and report medians. Each repeat round runs every variant once, in turn, so machine
noise lands on all of them alike, and every ratio compares numbers from the same process.

The micro-benchmarks in benchmarks/micro/ come in pairs: a loop of K exits (``in al, dx``)
or K privileged instructions (``cli``), and the same loop with a cheap stand-in. The
difference of the two wall times, divided by K, is the cost of one exit or one trap.

Run: ``make bench``, ``python benchmarks/run.py`` or ``python -m benchmarks.run``;
``--quick`` for one round, ``--json`` for the results on stdout. Results always go to
benchmarks/results/latest.json (``--output``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):               # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unicorn  # noqa: E402

from benchmarks.raw import run_raw  # noqa: E402
from hypervisor.session import load_image_bytes, run_image  # noqa: E402
from hypervisor.techniques import TECHNIQUES  # noqa: E402

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guests"
MICRO_DIR = HERE / "micro"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
MAX_INSTRUCTIONS = 5_000_000_000
MEMORY_MIB = 64
RAW, RAW_UNCOUNTED = "raw", "raw-uncounted"
BASELINE = "native"

# (name, the loop with the costly instruction, the same loop with a cheap stand-in, what it measures)
MICRO_PAIRS = [
    ("io_exit", "io_in.S", "io_base.S", "port I/O exit round trip (in al, dx from 0x3ff)"),
    ("trapped_cli", "trap_cli.S", "trap_base.S", "privileged instruction (cli), trapped where the technique traps it"),
]


@dataclass
class Sample:
    """What one run reports; everything but wall_s must be the same on every repeat."""
    wall_s: float
    instructions: int | None
    exits: dict[str, int]
    exit_code: int | None
    halted_reason: str
    console: bytes

    def fingerprint(self) -> tuple:
        return (self.instructions, tuple(sorted(self.exits.items())), self.exit_code, self.console)


def variants() -> list[str]:
    """Every technique, then the two bare-Unicorn runs."""
    return list(TECHNIQUES) + [RAW, RAW_UNCOUNTED]


def run_once(image: bytes, variant: str) -> Sample:
    if variant in (RAW, RAW_UNCOUNTED):
        r = run_raw(image, MEMORY_MIB, count=MAX_INSTRUCTIONS if variant == RAW else 0)
        return Sample(r.wall_s, r.instructions, {}, r.exit_code, r.halted_reason, r.console)
    r = run_image(image, technique=variant, memory_mib=MEMORY_MIB, max_instructions=MAX_INSTRUCTIONS)
    return Sample(r.wall_s, r.instructions, dict(r.exits), r.exit_code, r.halted_reason, r.console)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def micro_k(path: Path) -> int:
    match = re.search(r"^K\s*=\s*(\d+)", path.read_text(), re.M)
    if not match:
        raise SystemExit(f"{path}: no `K = N` line: cannot tell how many operations the loop does")
    return int(match.group(1))


# == measuring =============================================================================
def bench_guests(names: list[str], repeats: int, anomalies: list[str]) -> dict:
    images = {n: load_image_bytes(GUEST_DIR / f"{n}.S") for n in names}
    kinds = variants()
    samples = {n: {v: [] for v in kinds} for n in names}
    total, done = len(names) * len(kinds) * repeats, 0
    for name in names:
        for rnd in range(repeats):
            for v in kinds:                       # interleaved: native, trap, raw, ... each round
                s = run_once(images[name], v)
                samples[name][v].append(s)
                done += 1
                progress(f"[{done:3}/{total}] {name:10} {v:14} round {rnd + 1}/{repeats}: {s.wall_s:8.3f} s")
    results = {}
    for name in names:
        per = samples[name]
        native_med = statistics.median(s.wall_s for s in per[BASELINE])
        reference_console = per[BASELINE][0].console
        rows = {}
        for v in kinds:
            runs = per[v]
            first = runs[0]
            deterministic = all(s.fingerprint() == first.fingerprint() for s in runs)
            if not deterministic:
                anomalies.append(f"{name}/{v}: instructions, exits or console differ between repeats "
                                 f"({sorted({s.instructions for s in runs}, key=str)})")
            if first.exit_code != 0:
                anomalies.append(f"{name}/{v}: exit code {first.exit_code} ({first.halted_reason})")
            if first.console != reference_console:
                anomalies.append(f"{name}/{v}: console output differs from native's")
            native_instr = per[BASELINE][0].instructions
            if first.instructions is not None and first.instructions != native_instr:
                anomalies.append(f"{name}/{v}: {first.instructions} instructions, native ran {native_instr}")
            med = statistics.median(s.wall_s for s in runs)
            rows[v] = {"wall_s": [round(s.wall_s, 6) for s in runs], "median_s": round(med, 6),
                       "ratio_to_native": round(med / native_med, 4), "instructions": first.instructions,
                       "exits": first.exits, "exit_code": first.exit_code,
                       "halted_reason": first.halted_reason, "deterministic": deterministic}
        raw_med, unc_med = rows[RAW]["median_s"], rows[RAW_UNCOUNTED]["median_s"]
        results[name] = {
            "variants": rows,
            "console": reference_console.decode("latin-1"),
            # "native runs at X x the speed of raw Unicorn": time(raw) / time(native).
            "native_speed_vs_raw": round(raw_med / native_med, 4),
            # What exact counting costs on bare Unicorn: time(counted) / time(uncounted).
            "counting_overhead": round(raw_med / unc_med, 4),
        }
    return results


def bench_micro(repeats: int, anomalies: list[str]) -> dict:
    kinds = variants()
    results = {}
    for name, costly, cheap, what in MICRO_PAIRS:
        k = micro_k(MICRO_DIR / costly)
        if micro_k(MICRO_DIR / cheap) != k:
            raise SystemExit(f"{costly} and {cheap} disagree on K")
        images = {f: load_image_bytes(MICRO_DIR / f) for f in (costly, cheap)}
        per_op = {v: [] for v in kinds}
        walls = {v: {costly: [], cheap: []} for v in kinds}
        exits = {}
        for rnd in range(repeats):
            for v in kinds:
                a, b = run_once(images[costly], v), run_once(images[cheap], v)
                for s, f in ((a, costly), (b, cheap)):
                    walls[v][f].append(s.wall_s)
                    if s.exit_code != 0:
                        anomalies.append(f"micro {f}/{v}: exit code {s.exit_code} ({s.halted_reason})")
                exits[v] = a.exits
                per_op[v].append((a.wall_s - b.wall_s) / k * 1e6)
            progress(f"micro {name:12} round {rnd + 1}/{repeats}: "
                     + ", ".join(f"{v} {per_op[v][-1]:.2f} us" for v in kinds))
        results[name] = {
            "what": what, "k": k, "loop": costly, "baseline_loop": cheap,
            "per_op_us": {v: {"median": round(statistics.median(per_op[v]), 4),
                              "all": [round(x, 4) for x in per_op[v]],
                              "median_with_s": round(statistics.median(walls[v][costly]), 6),
                              "median_without_s": round(statistics.median(walls[v][cheap]), 6),
                              "exits": exits[v]}
                          for v in kinds},
        }
    return results


# == reporting =============================================================================
def format_exits(exits: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(exits.items())) or "-"


def render(report: dict) -> str:
    lines = [f"hvsim benchmarks: {report['repeats']} repeat(s), medians of wall time "
             f"(unicorn {report['host']['unicorn']}, python {report['host']['python']})", ""]
    header = f"{'guest':10} {'variant':14} {'median s':>9} {'÷native':>8} {'instructions':>13}  exits"
    lines += [header, "-" * len(header)]
    for name, g in report["guests"].items():
        for v, row in g["variants"].items():
            instr = "-" if row["instructions"] is None else f"{row['instructions']:,}"
            mark = "" if row["deterministic"] else "  (NOT deterministic)"
            lines.append(f"{name:10} {v:14} {row['median_s']:9.3f} {row['ratio_to_native']:8.3f} "
                         f"{instr:>13}  {format_exits(row['exits'])}{mark}")
        lines.append(f"{'':10} native speed = {g['native_speed_vs_raw']:.3f} × raw; "
                     f"exact counting costs raw {g['counting_overhead']:.3f}× (raw ÷ raw-uncounted)")
    if report["micro"]:
        lines += ["", "micro-benchmarks: µs per operation, (t_loop - t_baseline) / K, median of rounds"]
        kinds = list(next(iter(report["micro"].values()))["per_op_us"])
        lines.append(f"{'':14} " + " ".join(f"{v:>14}" for v in kinds))
        for name, m in report["micro"].items():
            lines.append(f"{name:14} " + " ".join(f"{m['per_op_us'][v]['median']:14.3f}" for v in kinds)
                         + f"   K={m['k']}: {m['what']}")
    lines.append("")
    lines.append("anomalies: " + ("none" if not report["anomalies"] else ""))
    lines += [f"  - {a}" for a in report["anomalies"]]
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("--plot: matplotlib is not installed; no plot written (pip install matplotlib to get one)")
        return
    guests = list(report["guests"])
    kinds = variants()
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(guests), 4))
    width = 0.8 / len(kinds)
    for i, v in enumerate(kinds):
        ax.bar([g + i * width for g in range(len(guests))],
               [report["guests"][n]["variants"][v]["ratio_to_native"] for n in guests], width, label=v)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([g + width * (len(kinds) - 1) / 2 for g in range(len(guests))], guests)
    ax.set_ylabel("median wall time ÷ native")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    progress(f"plot written to {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per guest and variant (default 5)")
    ap.add_argument("--quick", action="store_true", help="one round only: a smoke test")
    ap.add_argument("--guest", action="append", metavar="NAME",
                    help="only this guest of benchmarks/guests/ (repeatable; default all)")
    ap.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    ap.add_argument("--json", action="store_true", help="print the JSON results instead of the table")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the JSON results")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of ratio to native (needs matplotlib)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        ap.error("--repeats must be at least 1")
    available = sorted(p.stem for p in GUEST_DIR.glob("*.S"))
    names = args.guest or available
    missing = [n for n in names if n not in available]
    if missing:
        ap.error(f"no such guest {', '.join(missing)} in {GUEST_DIR} (have {', '.join(available)})")

    anomalies: list[str] = []
    report = {
        "schema": 1,
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "unicorn": unicorn.__version__,
                 "machine": platform.machine(), "system": platform.system()},
        "repeats": repeats, "max_instructions": MAX_INSTRUCTIONS, "memory_mib": MEMORY_MIB,
        "baseline": BASELINE, "variants": variants(),
        "guests": bench_guests(names, repeats, anomalies),
        "micro": {} if args.no_micro else bench_micro(repeats, anomalies),
        "anomalies": anomalies,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    progress(f"results written to {out}")
    print(json.dumps(report, indent=2) if args.json else render(report))
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
