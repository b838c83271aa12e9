"""What each technique costs: the benchmark guests and two micro-benchmarks, timed side by side.

For every guest in benchmarks/guests/ and every technique in ``TECHNIQUES`` (plus two
runs of the same image on a bare Unicorn, see ``raw.py``) we take ``--repeats`` wall-time
samples and report medians. Each repeat round runs every variant once, in turn, so machine
noise lands on all of them alike, and every ratio compares numbers from the same process.

The micro-benchmarks in benchmarks/micro/ are the nanobenchmarks of Adams & Agesen (ASPLOS
2006, "A Comparison of Software and Hardware Techniques for x86 Virtualization"): each is a
loop of K one operation (a ring-3 ``int 0x80``, ``in al, dx``, a CR0 write, call/ret, a #DE,
``cli``) and a baseline loop with a cheap stand-in (``nop``). The difference of the two wall
times, divided by K, is the cost of one operation; the difference of their exits, divided by
K, is the exits it causes. pgfault and ptemod wait for paging under trap: listed, not run.

Run: ``make bench``, ``python benchmarks/run.py`` or ``python -m benchmarks.run``;
``--quick`` for one round, ``--json`` for the results on stdout, ``--micro NAME`` for
one nanobenchmark, ``--k N`` to override every loop's K (a smoke test). Results always go to
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
import tempfile
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

# Ratios to native are given only where native's own cost is above noise (µs per operation).
NATIVE_NOISE_US = 0.05


@dataclass(frozen=True)
class MicroPair:
    """A nanobenchmark: the loop with the operation, the same loop with a cheap stand-in."""
    name: str
    loop: str
    baseline: str
    what: str
    # Raw Unicorn delivers no interrupt or exception through the IDT (it stops with
    # UC_ERR_EXCEPTION), so loops of them cannot run there: "-" rather than a wrong number.
    raw_runs: bool = True


MICRO_PAIRS = [
    MicroPair("syscall", "nano_syscall.S", "nano_user_base.S", "int 0x80 from ring 3 to a handler that only irets",
              raw_runs=False),
    MicroPair("in", "io_in.S", "io_base.S", "port read (in al, dx from 0x3ff), an I/O exit round trip"),
    MicroPair("cr0", "nano_cr0.S", "nano_base.S", "CR0 write at ring 0 (mov cr0, eax; the paper's cr8wr)"),
    MicroPair("callret", "nano_callret.S", "nano_base.S", "near call to a bare ret"),
    MicroPair("divzero", "nano_divzero.S", "nano_base.S", "#DE round trip (handler skips the div, iretd)",
              raw_runs=False),
    MicroPair("cli", "trap_cli.S", "trap_base.S", "privileged instruction (cli), trapped where the technique traps it"),
]
# The paper's other two rows need guest paging, which trap does not virtualise yet.
MICRO_NOT_YET = {"pgfault": "page fault round trip: needs paging under trap (not yet)",
                 "ptemod": "PTE write under shadow paging: needs paging under trap (not yet)"}


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


def load_micro(path: Path, k: int | None) -> bytes:
    """The loop's image; with ``k``, assembled from a copy whose `K = ` line says ``k``."""
    if k is None:
        return load_image_bytes(path)
    text = re.sub(r"^K\s*=\s*\d+", f"K = {k}", path.read_text(), count=1, flags=re.M)
    text = re.sub(r'^(\s*\.include\s+")([^"/][^"]*)"',
                  lambda m: f'{m.group(1)}{(path.parent / m.group(2)).resolve()}"', text, flags=re.M)
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / path.name
        copy.write_text(text)
        return load_image_bytes(copy)


def exit_total(s: Sample) -> int:
    return sum(s.exits.values())


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


def bench_micro(repeats: int, anomalies: list[str], only: list[str] | None = None,
                k_override: int | None = None) -> dict:
    """Every nanobenchmark (or those in ``only``): per variant, µs and exits per operation."""
    kinds = variants()
    results = {}
    pairs = [p for p in MICRO_PAIRS if only is None or p.name in only]
    for pair in pairs:
        k = micro_k(MICRO_DIR / pair.loop)
        if micro_k(MICRO_DIR / pair.baseline) != k:
            raise SystemExit(f"{pair.loop} and {pair.baseline} disagree on K")
        k = k_override or k
        images = {f: load_micro(MICRO_DIR / f, k_override) for f in (pair.loop, pair.baseline)}
        ran = [v for v in kinds if pair.raw_runs or v not in (RAW, RAW_UNCOUNTED)]
        per_op = {v: [] for v in ran}
        walls = {v: {pair.loop: [], pair.baseline: []} for v in ran}
        exits, exits_per_op = {}, {}
        for rnd in range(repeats):
            for v in ran:                         # interleaved: every variant once per round
                a, b = run_once(images[pair.loop], v), run_once(images[pair.baseline], v)
                for s, f in ((a, pair.loop), (b, pair.baseline)):
                    walls[v][f].append(s.wall_s)
                    if s.exit_code != 0:
                        anomalies.append(f"micro {f}/{v}: exit code {s.exit_code} ({s.halted_reason})")
                exits[v] = {kind: (n - b.exits.get(kind, 0)) / k for kind, n in a.exits.items()
                            if n != b.exits.get(kind, 0)}
                exits_per_op[v] = (exit_total(a) - exit_total(b)) / k
                per_op[v].append((a.wall_s - b.wall_s) / k * 1e6)
            progress(f"micro {pair.name:8} round {rnd + 1}/{repeats}: "
                     + ", ".join(f"{v} {per_op[v][-1]:.2f} us" for v in ran))
        native_us = statistics.median(per_op[BASELINE])
        rows = {}
        for v in kinds:
            if v not in ran:
                rows[v] = {"median": None, "skipped": "raw Unicorn does not deliver interrupts or exceptions"}
                continue
            med = statistics.median(per_op[v])
            rows[v] = {"median": round(med, 4), "all": [round(x, 4) for x in per_op[v]],
                       "ratio_to_native": round(med / native_us, 3) if native_us >= NATIVE_NOISE_US else None,
                       "median_with_s": round(statistics.median(walls[v][pair.loop]), 6),
                       "median_without_s": round(statistics.median(walls[v][pair.baseline]), 6),
                       # raw runs keep no exit accounting: None, not 0
                       "exits_per_op": None if v in (RAW, RAW_UNCOUNTED) else round(exits_per_op[v], 5),
                       "exits": {kind: round(x, 5) for kind, x in sorted(exits[v].items())}}
        results[pair.name] = {"what": pair.what, "k": k, "loop": pair.loop,
                              "baseline_loop": pair.baseline, "per_op_us": rows}
    for name, why in MICRO_NOT_YET.items():
        if only is None or name in only:
            results[name] = {"what": why, "k": None, "not_yet": True, "per_op_us": {}}
    return results


# == reporting =============================================================================
def format_exits(exits: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(exits.items())) or "-"


def render_micro(micro: dict, kinds: list[str]) -> list[str]:
    """The nanobenchmark table: per operation and variant, µs, exits and the ratio to native."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["", "nanobenchmarks (after Adams & Agesen, ASPLOS 2006): µs per operation = "
                 "(t_loop - t_baseline) / K, median of rounds;",
             "exits per operation = (exits_loop - exits_baseline) / K; ÷native = µs ÷ native's µs "
             f"(- where native's is below {NATIVE_NOISE_US} µs or the variant cannot run the loop)"]
    header = f"{'op':8} {'variant':14} {'µs/op':>9} {'exits/op':>9} {'÷native':>8}"
    lines += [header, "-" * len(header)]
    for name, m in micro.items():
        if m.get("not_yet"):
            lines.append(f"{name:8} {'(all)':14} {'not yet':>9} {'':>9} {'':>8}   {m['what']}")
            continue
        for i, v in enumerate(kinds):
            row = m["per_op_us"][v]
            note = f"   K={m['k']}: {m['what']}" if i == 0 else ("   (not run: " + row["skipped"] + ")"
                                                                 if "skipped" in row else "")
            lines.append(f"{name if i == 0 else '':8} {v:14} {num(row['median'], '9.3f'):>9} "
                         f"{num(row.get('exits_per_op'), '9.2f'):>9} "
                         f"{num(row.get('ratio_to_native'), '8.2f'):>8}{note}")
    return lines


def render(report: dict) -> str:
    lines = [f"hvsim benchmarks: {report['repeats']} repeat(s), medians of wall time "
             f"(unicorn {report['host']['unicorn']}, python {report['host']['python']})", ""]
    header = f"{'guest':10} {'variant':14} {'median s':>9} {'÷native':>8} {'instructions':>13}  exits"
    if report["guests"]:
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
        lines += render_micro(report["micro"], report["variants"])
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
    ap.add_argument("--micro", action="append", metavar="NAME",
                    help="only this nanobenchmark (repeatable; default all: "
                         + ", ".join([p.name for p in MICRO_PAIRS] + list(MICRO_NOT_YET)) + ")")
    ap.add_argument("--k", type=int, metavar="N", help="override every nanobenchmark loop's K (smoke tests)")
    ap.add_argument("--no-guests", action="store_true", help="skip the benchmark guests (nanobenchmarks only)")
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

    known_micro = [p.name for p in MICRO_PAIRS] + list(MICRO_NOT_YET)
    unknown = [n for n in args.micro or [] if n not in known_micro]
    if unknown:
        ap.error(f"no such nanobenchmark {', '.join(unknown)} (have {', '.join(known_micro)})")
    if args.k is not None and args.k < 1:
        ap.error("--k must be at least 1")
    if args.no_guests:
        names = []

    anomalies: list[str] = []
    report = {
        "schema": 1,
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"python": platform.python_version(), "unicorn": unicorn.__version__,
                 "machine": platform.machine(), "system": platform.system()},
        "repeats": repeats, "max_instructions": MAX_INSTRUCTIONS, "memory_mib": MEMORY_MIB,
        "baseline": BASELINE, "variants": variants(),
        "guests": bench_guests(names, repeats, anomalies),
        "micro": {} if args.no_micro else bench_micro(repeats, anomalies, args.micro, args.k),
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
