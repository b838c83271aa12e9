"""What each technique costs: the benchmark guests and the nanobenchmarks, timed side by side.

For every guest in benchmarks/guests/ and every technique in ``TECHNIQUES`` (plus two
runs of the same image on a bare Unicorn, see ``raw.py``, and one on qemu-system-i386, see
``qemu.py``) we take ``--repeats`` samples and report medians of CPU time (wall time is kept
in the JSON too; on a shared machine it is the noisier of the two). Each repeat round runs
every variant once, in turn, so machine noise lands on all of them alike, and every ratio
compares numbers from the same rounds. QEMU's times are net of its start-up: ``empty.S``
(a guest that exits at once) runs on QEMU in the same round and is subtracted.

The micro-benchmarks in benchmarks/micro/ are the nanobenchmarks of Adams & Agesen (ASPLOS
2006, "A Comparison of Software and Hardware Techniques for x86 Virtualization"): each is a
loop of K one operation (a ring-3 ``int 0x80`` with paging off and on, ``in al, dx``, a CR0
write, call/ret, a #PF, a #DE, a PTE update, a TLB miss, ``cli``) and a baseline loop with a
cheap stand-in (``nop``). The difference of the two CPU times, divided by K, is the cost of
one operation; the difference of their exits, divided by K, is the exits it causes. QEMU does
not run them: its start-up varies by milliseconds, more than a whole K-op loop.

A guest or loop that turns paging on says so in a ``# hvsim: paging`` line. raw-fill (bare
Unicorn with the identity TLB fill, ``raw.py``) cannot run those: the fill refuses the first
paged translation, and only hvsim's monitor knows to hand the walk back to the CPU. They are
listed as not run there, with the reason, rather than as a crash.

Run: ``make bench``, ``python benchmarks/run.py`` or ``python -m benchmarks.run``;
``--quick`` for one round, ``--json`` for the results on stdout, ``--micro NAME`` for
one nanobenchmark, ``--k N`` to override every loop's K (a smoke test), ``--no-qemu`` to
leave QEMU out. Results always go to benchmarks/results/latest.json (``--output``). Progress
goes to stderr: one line rewritten in place on a terminal, a line per measurement otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):               # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unicorn  # noqa: E402

from benchmarks.qemu import EMPTY_GUEST, QEMU, find_qemu, qemu_version, run_qemu  # noqa: E402
from benchmarks.raw import run_raw  # noqa: E402
from hypervisor.machine.native.tlbfill import native_fill  # noqa: E402
from hypervisor.session import build_domain, load_image_bytes  # noqa: E402
from hypervisor.techniques import TECHNIQUES  # noqa: E402

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guests"
MICRO_DIR = HERE / "micro"
DEFAULT_OUTPUT = HERE / "results" / "latest.json"
MAX_INSTRUCTIONS = 5_000_000_000
MEMORY_MIB = 64
RAW, RAW_UNCOUNTED, RAW_FILL = "raw", "raw-uncounted", "raw-fill"
QEMU_VARIANT = "qemu"
BASELINE = "native"
QEMU_TIMEOUT_S = 600

# Issue 6's targets, printed beside the ratios they bound: native's speed as a fraction of
# raw Unicorn's without counting, per guest (absent: no target), and trap's as a fraction of
# native's; at most this many times QEMU's time for native on compute.
TARGET_NATIVE_VS_UNCOUNTED = {"compute": 0.9, "callret": 0.75}
TARGET_TRAP_VS_NATIVE = 0.9
TARGET_NATIVE_OVER_QEMU = {"compute": 2.0}
# Issue 8's: trap with shadow paging at least 0.8 of native's speed on the paged sieves (in
# place of 0.9 there), and hvm at least 0.95 of native's on compute.
TARGET_TRAP_VS_NATIVE_PAGED = {"compute_paged": 0.8, "compute_paged_4m": 0.8}
TARGET_HVM_VS_NATIVE = {"compute": 0.95}
HVM = "hvm"

PAGING_MARK = "# hvsim: paging"
NOT_RUN_PAGING = "raw-fill's identity TLB fill cannot run a guest with paging on"
NOT_RUN_DELIVERY = "raw Unicorn does not deliver interrupts or exceptions"

# Ratios to native are given only where native's own cost is above noise (µs per operation).
NATIVE_NOISE_US = 0.05


def turns_paging_on(path: Path) -> bool:
    """Does the guest or loop at ``path`` set CR0.PG (a ``# hvsim: paging`` line says so)?"""
    return any(line.startswith(PAGING_MARK) for line in path.read_text().splitlines())


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
    MicroPair("syscall_paged", "nano_syscall_paged.S", "nano_user_base_paged.S",
              "the same int 0x80 with paging on (0-8 MiB identity, 4 KiB pages)", raw_runs=False),
    MicroPair("in", "io_in.S", "io_base.S", "port read (in al, dx from 0x3ff), an I/O exit round trip"),
    MicroPair("cr0", "nano_cr0.S", "nano_base.S", "CR0 write at ring 0 (mov cr0, eax; the paper's cr8wr)"),
    MicroPair("callret", "nano_callret.S", "nano_base.S", "near call to a bare ret"),
    # pgfault's baseline is ptemod's loop: the same PTE write, invlpg and read, of a present page.
    MicroPair("pgfault", "nano_pgfault.S", "nano_ptemod.S",
              "#PF round trip: a read of a not-present page, the handler maps it, iretd, the read again",
              raw_runs=False),
    MicroPair("divzero", "nano_divzero.S", "nano_base.S", "#DE round trip (handler skips the div, iretd)",
              raw_runs=False),
    MicroPair("ptemod", "nano_ptemod.S", "nano_pg_base.S", "PTE write to another frame, invlpg, read through it"),
    MicroPair("tlbmiss", "nano_tlbmiss.S", "nano_tlbmiss_base.S",
              "TLB miss after a CR3 reload of the same value (trap: refilled from the cached shadow)"),
    MicroPair("shadowfault", "nano_shadowfault.S", "nano_shadowfault_base.S",
              "store of a PTE's own value, read of its page (trap: the store drops the shadow entry, "
              "the read is a hidden shadow fault)"),
    MicroPair("cli", "trap_cli.S", "trap_base.S", "privileged instruction (cli), trapped where the technique traps it"),
]


@dataclass
class Sample:
    """What one run reports; everything but the times must be the same on every repeat."""
    wall_s: float
    cpu_s: float
    instructions: int | None
    exits: dict[str, int]
    exit_code: int | None
    halted_reason: str
    console: bytes

    def fingerprint(self) -> tuple:
        return (self.instructions, tuple(sorted(self.exits.items())), self.exit_code, self.console)


def variants(with_qemu: bool = False) -> list[str]:
    """Every technique, then the two bare-Unicorn runs, then QEMU if it is measured."""
    raw = [RAW, RAW_UNCOUNTED] + ([RAW_FILL] if native_fill() is not None else [])
    return list(TECHNIQUES) + raw + ([QEMU_VARIANT] if with_qemu else [])


def why_not_run(variant: str, sources: list[Path], delivers: bool = False) -> str | None:
    """Why ``variant`` cannot run the guest or loop in ``sources`` (None: it can). ``delivers``:
    the code needs an interrupt or exception delivered through its IDT."""
    if variant in (RAW, RAW_UNCOUNTED, RAW_FILL) and delivers:
        return NOT_RUN_DELIVERY
    if variant == RAW_FILL and any(turns_paging_on(s) for s in sources):
        return NOT_RUN_PAGING
    return None


def guest_variants(name: str, with_qemu: bool = False) -> list[str]:
    """The variants that run guest ``name``: all but raw-fill where it turns paging on."""
    return [v for v in variants(with_qemu) if why_not_run(v, [GUEST_DIR / f"{name}.S"]) is None]


def run_once(image: bytes, variant: str, qemu: "QemuRunner | None" = None) -> Sample:
    if variant == QEMU_VARIANT:
        return qemu.run(image)
    if variant in (RAW, RAW_UNCOUNTED, RAW_FILL):
        r = run_raw(image, MEMORY_MIB, count=MAX_INSTRUCTIONS if variant == RAW else 0,
                    tlb_fill=variant == RAW_FILL)
        return Sample(r.wall_s, r.cpu_s, r.instructions, {}, r.exit_code, r.halted_reason, r.console)
    domain = build_domain(image, variant, MEMORY_MIB, MAX_INSTRUCTIONS)
    try:
        cpu0 = time.process_time()       # the run alone, as RunResult.wall_s: not building the PC
        r = domain.run()
        cpu = time.process_time() - cpu0
    finally:
        domain.destroy()
    return Sample(r.wall_s, cpu, r.instructions, dict(r.exits), r.exit_code, r.halted_reason, r.console)


class QemuRunner:
    """qemu-system-i386 on the benchmark images, each written once to a temporary file."""

    def __init__(self, binary: str):
        self.binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="hvsim-bench-")
        self._paths: dict[bytes, Path] = {}
        self.empty = load_image_bytes(EMPTY_GUEST)

    def run(self, image: bytes) -> Sample:
        path = self._paths.get(image)
        if path is None:
            path = self._paths[image] = Path(self._dir.name) / f"image{len(self._paths)}.bin"
            path.write_bytes(image)
        r = run_qemu(self.binary, path, MEMORY_MIB, QEMU_TIMEOUT_S)
        return Sample(r.wall_s, r.cpu_s, None, {}, r.exit_code, r.halted_reason, r.console)

    def close(self) -> None:
        self._dir.cleanup()


class Meter:
    """Progress on stderr. On a terminal, one line rewritten in place: what runs now, n of N,
    time so far; elsewhere (a log, CI), a plain line per measurement, as it ends."""
    CLEAR = "\r\x1b[K"

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.done = total, 0
        try:
            self.live = self.stream.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self._start = time.perf_counter()
        self._drawn = False

    def _elapsed(self) -> str:
        s = int(time.perf_counter() - self._start)
        return f"{s // 60}:{s % 60:02d}"

    def begin(self, what: str) -> None:
        if self.live:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            line = f"[{self.done + 1}/{self.total}] {what}  (elapsed {self._elapsed()})"
            self.stream.write(self.CLEAR + line[:max(width, 10)])
            self.stream.flush()
            self._drawn = True

    def end(self, what: str, result: str = "", quiet: bool = False) -> None:
        """One measurement is over; ``quiet`` keeps it off the plain log (a round's summary
        line says more)."""
        self.done += 1
        if not self.live and not quiet:
            self.note(f"[{self.done:3}/{self.total}] {what}" + (f": {result}" if result else ""))

    def note(self, msg: str) -> None:
        """A line that stays (a round's summary, a warning)."""
        self.clear()
        print(msg, file=self.stream, flush=True)

    def clear(self) -> None:
        if self._drawn:
            self.stream.write(self.CLEAR)
            self.stream.flush()
            self._drawn = False


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
def guest_runs(names: list[str], repeats: int, qemu: QemuRunner | None) -> int:
    """How many runs ``bench_guests`` makes (QEMU's empty guest is two more per round)."""
    return sum(repeats * (len(guest_variants(n, qemu is not None)) + (2 if qemu else 0)) for n in names)


def micro_runs(repeats: int, only: list[str] | None = None) -> int:
    return sum(repeats * 2 * len(micro_variants(p)) for p in MICRO_PAIRS if only is None or p.name in only)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def iqr(xs: list[float]) -> float:
    """The interquartile range: how widely the middle half of ``xs`` scatters."""
    if len(xs) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q3 - q1


def qemu_startup(qemu: QemuRunner, name: str, rnd: int, repeats: int, into: list[Sample],
                 anomalies: list[str], meter: Meter) -> None:
    """One run of empty.S on QEMU: its start-up and shutdown, to subtract."""
    meter.begin(f"{name} qemu start-up (empty.S) round {rnd + 1}/{repeats}")
    e = qemu.run(qemu.empty)
    into.append(e)
    if e.exit_code != 0:
        anomalies.append(f"qemu empty.S: exit code {e.exit_code} ({e.halted_reason})")
    meter.end(f"{name:10} {'qemu empty.S':14} round {rnd + 1}/{repeats}", f"{e.cpu_s:8.3f} s cpu")


def bench_guests(names: list[str], repeats: int, anomalies: list[str], qemu: QemuRunner | None = None,
                 meter: Meter | None = None) -> dict:
    images = {n: load_image_bytes(GUEST_DIR / f"{n}.S") for n in names}
    ran = {n: guest_variants(n, qemu is not None) for n in names}
    meter = meter or Meter(guest_runs(names, repeats, qemu))
    samples = {n: {v: [] for v in ran[n]} for n in names}
    empty: dict[str, list[Sample]] = {n: [] for n in names}      # QEMU's start-up, per round
    if qemu is not None and names:
        qemu.run(qemu.empty)                      # warm-up, not counted: the first start reads QEMU from disk
    for name in names:
        for rnd in range(repeats):
            for v in ran[name]:                   # interleaved: native, trap, raw, ... each round
                what = f"{name} {v} round {rnd + 1}/{repeats}"
                if v == QEMU_VARIANT:             # its start-up, measured in the same round
                    qemu_startup(qemu, name, rnd, repeats, empty[name], anomalies, meter)
                meter.begin(what)
                s = run_once(images[name], v, qemu)
                samples[name][v].append(s)
                meter.end(f"{name:10} {v:14} round {rnd + 1}/{repeats}", f"{s.cpu_s:8.3f} s cpu, {s.wall_s:8.3f} s wall")
                if v == QEMU_VARIANT:             # ... once before its run and once after
                    qemu_startup(qemu, name, rnd, repeats, empty[name], anomalies, meter)
    meter.clear()
    results = {}
    for name in names:
        per = samples[name]
        if qemu is not None:
            # Net of start-up: the median start-up of the rounds, subtracted from every round.
            # (Round by round would add two start-ups' noise, ±30 ms here, to each sample.)
            up_cpu = statistics.median([e.cpu_s for e in empty[name]])
            up_wall = statistics.median([e.wall_s for e in empty[name]])
            per[QEMU_VARIANT] = [Sample(s.wall_s - up_wall, s.cpu_s - up_cpu, s.instructions, s.exits,
                                        s.exit_code, s.halted_reason, s.console) for s in per[QEMU_VARIANT]]
        native_med = statistics.median([s.cpu_s for s in per[BASELINE]])
        native_wall = statistics.median([s.wall_s for s in per[BASELINE]])
        reference_console = per[BASELINE][0].console
        native_instr = per[BASELINE][0].instructions
        rows = {}
        for v in ran[name]:
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
            if first.instructions is not None and first.instructions != native_instr:
                anomalies.append(f"{name}/{v}: {first.instructions} instructions, native ran {native_instr}")
            med = statistics.median([s.cpu_s for s in runs])
            med_wall = statistics.median([s.wall_s for s in runs])
            rows[v] = {"cpu_s": [round(s.cpu_s, 6) for s in runs], "wall_s": [round(s.wall_s, 6) for s in runs],
                       "median_s": round(med, 6), "median_cpu_s": round(med, 6), "median_wall_s": round(med_wall, 6),
                       "ratio_to_native": round(med / native_med, 4),
                       "ratio_to_native_wall": round(med_wall / native_wall, 4),
                       "instructions": first.instructions, "exits": first.exits, "exit_code": first.exit_code,
                       "halted_reason": first.halted_reason, "deterministic": deterministic}
        if qemu is not None:
            ups = [e.cpu_s for e in empty[name]]
            rows[QEMU_VARIANT].update({
                "net_of_startup": True,
                "startup_cpu_s": [round(x, 6) for x in ups],
                "startup_wall_s": [round(e.wall_s, 6) for e in empty[name]],
                "median_startup_cpu_s": round(statistics.median(ups), 6),
                # the start-ups' interquartile range: a net time below it is within the start-up's
                # own scatter, and its ratios are noise
                "startup_spread_s": round(iqr(ups), 6),
            })
        med = {v: rows[v]["median_s"] for v in ran[name]}
        trap = med.get("trap")
        results[name] = {
            "variants": rows,
            # variants that cannot run this guest, and why
            "not_run": {v: why for v in variants(qemu is not None)
                        if (why := why_not_run(v, [GUEST_DIR / f"{name}.S"])) is not None},
            "console": reference_console.decode("latin-1"),
            # "native runs at X x the speed of raw Unicorn": time(raw) / time(native).
            "native_speed_vs_raw": _ratio(med[RAW], native_med),
            # ... and of raw Unicorn without counting: the throughput reference.
            "native_speed_vs_raw_uncounted": _ratio(med[RAW_UNCOUNTED], native_med),
            # trap's speed as a fraction of native's: time(native) / time(trap).
            "trap_speed_vs_native": _ratio(native_med, trap),
            # ... and hvm's.
            "hvm_speed_vs_native": _ratio(native_med, med.get(HVM)),
            # native's time over QEMU's (net of start-up): how many times slower than QEMU.
            "native_over_qemu": _ratio(native_med, med.get(QEMU_VARIANT)),
            # What exact counting costs on bare Unicorn: time(counted) / time(uncounted).
            "counting_overhead": _ratio(med[RAW], med[RAW_UNCOUNTED]),
        }
    return results


def micro_not_run(pair: MicroPair, variant: str) -> str | None:
    """Why ``variant`` cannot run ``pair``'s loops (None: it can)."""
    return why_not_run(variant, [MICRO_DIR / pair.loop, MICRO_DIR / pair.baseline], delivers=not pair.raw_runs)


def micro_variants(pair: MicroPair) -> list[str]:
    """The variants that run ``pair``: never QEMU (its start-up varies by more than a loop
    takes), raw Unicorn only where the loop needs no delivery through the IDT, and raw-fill
    only with paging off."""
    return [v for v in variants() if micro_not_run(pair, v) is None]


def bench_micro(repeats: int, anomalies: list[str], only: list[str] | None = None,
                k_override: int | None = None, meter: Meter | None = None) -> dict:
    """Every nanobenchmark (or those in ``only``): per variant, µs and exits per operation,
    from CPU time (wall time kept beside it)."""
    kinds = variants()
    meter = meter or Meter(micro_runs(repeats, only))
    results = {}
    pairs = [p for p in MICRO_PAIRS if only is None or p.name in only]
    for pair in pairs:
        k = micro_k(MICRO_DIR / pair.loop)
        if micro_k(MICRO_DIR / pair.baseline) != k:
            raise SystemExit(f"{pair.loop} and {pair.baseline} disagree on K")
        k = k_override or k
        images = {f: load_micro(MICRO_DIR / f, k_override) for f in (pair.loop, pair.baseline)}
        ran = micro_variants(pair)
        per_op = {v: [] for v in ran}
        per_op_wall = {v: [] for v in ran}
        cpus = {v: {pair.loop: [], pair.baseline: []} for v in ran}
        exits, exits_per_op = {}, {}
        for rnd in range(repeats):
            for v in ran:                         # interleaved: every variant once per round
                done = []
                for f in (pair.loop, pair.baseline):
                    meter.begin(f"micro {pair.name} {v} {f} round {rnd + 1}/{repeats}")
                    s = run_once(images[f], v)
                    meter.end(f"micro {pair.name} {v} {f}", quiet=True)
                    cpus[v][f].append(s.cpu_s)
                    if s.exit_code != 0:
                        anomalies.append(f"micro {f}/{v}: exit code {s.exit_code} ({s.halted_reason})")
                    done.append(s)
                a, b = done
                exits[v] = {kind: (n - b.exits.get(kind, 0)) / k for kind, n in a.exits.items()
                            if n != b.exits.get(kind, 0)}
                exits_per_op[v] = (exit_total(a) - exit_total(b)) / k
                per_op[v].append((a.cpu_s - b.cpu_s) / k * 1e6)
                per_op_wall[v].append((a.wall_s - b.wall_s) / k * 1e6)
            meter.note(f"[{meter.done:3}/{meter.total}] micro {pair.name:13} round {rnd + 1}/{repeats}: "
                       + ", ".join(f"{v} {per_op[v][-1]:.2f} us" for v in ran))
        native_us = statistics.median(per_op[BASELINE])
        rows = {}
        for v in kinds:
            if v not in ran:
                rows[v] = {"median": None, "skipped": micro_not_run(pair, v)}
                continue
            med = statistics.median(per_op[v])
            rows[v] = {"median": round(med, 4), "all": [round(x, 4) for x in per_op[v]],
                       "median_wall": round(statistics.median(per_op_wall[v]), 4),
                       "ratio_to_native": round(med / native_us, 3) if native_us >= NATIVE_NOISE_US else None,
                       "median_with_s": round(statistics.median(cpus[v][pair.loop]), 6),
                       "median_without_s": round(statistics.median(cpus[v][pair.baseline]), 6),
                       # raw runs keep no exit accounting: None, not 0
                       "exits_per_op": None if v in (RAW, RAW_UNCOUNTED, RAW_FILL) else round(exits_per_op[v], 5),
                       "exits": {kind: round(x, 5) for kind, x in sorted(exits[v].items())}}
        results[pair.name] = {"what": pair.what, "k": k, "loop": pair.loop,
                              "baseline_loop": pair.baseline, "per_op_us": rows}
    meter.clear()
    return results


# == reporting =============================================================================
def format_exits(exits: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(exits.items())) or "-"


def render_micro(micro: dict, kinds: list[str]) -> list[str]:
    """The nanobenchmark table: per operation and variant, µs, exits and the ratio to native."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = ["", "nanobenchmarks (after Adams & Agesen, ASPLOS 2006): µs per operation = "
                 "(t_loop - t_baseline) / K in CPU time, median of rounds;",
             "exits per operation = (exits_loop - exits_baseline) / K; ÷native = µs ÷ native's µs "
             f"(- where native's is below {NATIVE_NOISE_US} µs or the variant cannot run the loop)"]
    header = f"{'op':13} {'variant':14} {'µs/op':>9} {'exits/op':>9} {'÷native':>8}"
    lines += [header, "-" * len(header)]
    for name, m in micro.items():
        for i, v in enumerate(kinds):
            row = m["per_op_us"][v]
            note = f"   K={m['k']}: {m['what']}" if i == 0 else ("   (not run: " + row["skipped"] + ")"
                                                                 if "skipped" in row else "")
            lines.append(f"{name if i == 0 else '':13} {v:14} {num(row['median'], '9.3f'):>9} "
                         f"{num(row.get('exits_per_op'), '9.2f'):>9} "
                         f"{num(row.get('ratio_to_native'), '8.2f'):>8}{note}")
    return lines


def _target(value: float | None, target: float | None, at_least: bool = True) -> str:
    """Where an issue (6 or 8) sets a target for a ratio: whether ``value`` meets it."""
    if value is None or target is None:
        return ""
    met = value >= target if at_least else value <= target
    return f" (target {'≥' if at_least else '≤'} {target:g}: {'met' if met else 'NOT met'})"


GUEST_WIDTH = 16                    # the guest column: "compute_paged_4m"


def summary_lines(name: str, g: dict) -> list[str]:
    """The ratios under a guest's rows: native against raw Unicorn (uncounted, the throughput
    reference, and counted), trap and hvm against native, native against QEMU."""
    pad = " " * (GUEST_WIDTH + 1)
    unc = g["native_speed_vs_raw_uncounted"]
    lines = [f"{pad}native speed = {unc:.3f} × raw-uncounted"
             f"{_target(unc, TARGET_NATIVE_VS_UNCOUNTED.get(name))}; {g['native_speed_vs_raw']:.3f} × raw (counted)"]
    if g.get("trap_speed_vs_native") is not None:
        trap = g["trap_speed_vs_native"]
        target = TARGET_TRAP_VS_NATIVE_PAGED.get(name, TARGET_TRAP_VS_NATIVE)
        lines.append(f"{pad}trap speed = {trap:.3f} × native{_target(trap, target)}")
    if g.get("hvm_speed_vs_native") is not None:
        hvm = g["hvm_speed_vs_native"]
        lines.append(f"{pad}hvm speed = {hvm:.3f} × native{_target(hvm, TARGET_HVM_VS_NATIVE.get(name))}")
    qemu = g["variants"].get(QEMU_VARIANT)
    if qemu is not None and qemu["median_s"] <= 0:
        lines.append(f"{pad}native ÷ qemu: not measurable here (QEMU's net time {qemu['median_s']:.3f} s: "
                     "its work is lost in its start-up's scatter)")
    elif g.get("native_over_qemu") is not None:
        q = g["native_over_qemu"]
        noisy = qemu is not None and qemu["median_s"] <= qemu["startup_spread_s"]
        lines.append(f"{pad}native ÷ qemu = {q:.2f} (QEMU net of its start-up)"
                     f"{_target(q, TARGET_NATIVE_OVER_QEMU.get(name), at_least=False)}"
                     + (f"; NOISY: QEMU's net {qemu['median_s']:.3f} s is within its start-up's scatter "
                        f"(IQR {qemu['startup_spread_s']:.3f} s)" if noisy else ""))
    fill = g["variants"].get(RAW_FILL)
    if fill is not None and fill["median_s"] > 0:
        lines.append(f"{pad}native speed = {fill['median_s'] / g['variants']['native']['median_s']:.3f} × raw-fill "
                     "(bare Unicorn with the same C TLB fill: the fastest this engine runs the guest)")
    lines.append(f"{pad}exact counting costs raw {g['counting_overhead']:.3f}× (raw ÷ raw-uncounted)")
    return lines


def render(report: dict) -> str:
    host = report["host"]
    lines = [f"hvsim benchmarks: {report['repeats']} repeat(s), medians of CPU time "
             f"(unicorn {host['unicorn']}, python {host['python']}, {host.get('qemu') or 'no qemu'})", ""]
    header = f"{'guest':{GUEST_WIDTH}} {'variant':14} {'median s':>9} {'÷native':>8} {'instructions':>13}  exits"
    if report["guests"]:
        lines += [header, "-" * len(header)]
    for name, g in report["guests"].items():
        for v, row in g["variants"].items():
            instr = "-" if row["instructions"] is None else f"{row['instructions']:,}"
            mark = "" if row["deterministic"] else "  (NOT deterministic)"
            exits = format_exits(row["exits"])
            if row.get("net_of_startup"):
                exits = f"net of start-up ({row['median_startup_cpu_s']:.3f} s, empty.S)"
                if row["median_s"] <= row["startup_spread_s"]:
                    exits += f"; within its scatter (IQR {row['startup_spread_s']:.3f} s): noise"
            lines.append(f"{name:{GUEST_WIDTH}} {v:14} {row['median_s']:9.3f} {row['ratio_to_native']:8.3f} "
                         f"{instr:>13}  {exits}{mark}")
        for v, why in g.get("not_run", {}).items():
            lines.append(f"{name:{GUEST_WIDTH}} {v:14} {'-':>9} {'-':>8} {'-':>13}  not run: {why}")
        lines += summary_lines(name, g)
    if report["micro"]:
        lines += render_micro(report["micro"], report["micro_variants"])
    lines.append("")
    lines += [f"note: {n}" for n in report.get("notes", [])]
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
    kinds = report["variants"]
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(guests), 4))
    width = 0.8 / len(kinds)
    for i, v in enumerate(kinds):
        ax.bar([g + i * width for g in range(len(guests))],
               [report["guests"][n]["variants"].get(v, {}).get("ratio_to_native", 0) for n in guests], width,
               label=v)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([g + width * (len(kinds) - 1) / 2 for g in range(len(guests))], guests)
    ax.set_ylabel("median CPU time ÷ native")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    progress(f"plot written to {path}")


def main(argv: list[str] | None = None, prog: str = "benchmarks/run.py") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per guest and variant (default 5)")
    ap.add_argument("--quick", action="store_true", help="one round only: a smoke test")
    ap.add_argument("--guest", action="append", metavar="NAME",
                    help="only this guest of benchmarks/guests/ (repeatable; default all)")
    ap.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    ap.add_argument("--micro", action="append", metavar="NAME",
                    help="only this nanobenchmark (repeatable; default all: "
                         + ", ".join(p.name for p in MICRO_PAIRS) + ")")
    ap.add_argument("--k", type=int, metavar="N", help="override every nanobenchmark loop's K (smoke tests)")
    ap.add_argument("--no-guests", action="store_true", help="skip the benchmark guests (nanobenchmarks only)")
    ap.add_argument("--json", action="store_true", help="print the JSON results instead of the table")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the JSON results")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of ratio to native (needs matplotlib)")
    ap.add_argument("--no-qemu", action="store_true", help="leave qemu-system-i386 out of the guest table")
    ap.add_argument("--qemu", default=QEMU, metavar="BINARY",
                    help=f"the QEMU to compare with (default {QEMU}; skipped with a note if not found)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        ap.error("--repeats must be at least 1")
    available = sorted(p.stem for p in GUEST_DIR.glob("*.S"))
    names = args.guest or available
    missing = [n for n in names if n not in available]
    if missing:
        ap.error(f"no such guest {', '.join(missing)} in {GUEST_DIR} (have {', '.join(available)})")

    known_micro = [p.name for p in MICRO_PAIRS]
    unknown = [n for n in args.micro or [] if n not in known_micro]
    if unknown:
        ap.error(f"no such nanobenchmark {', '.join(unknown)} (have {', '.join(known_micro)})")
    if args.k is not None and args.k < 1:
        ap.error("--k must be at least 1")
    if args.no_guests:
        names = []

    anomalies: list[str] = []
    notes: list[str] = []
    qemu_path = None if args.no_qemu or not names else find_qemu(args.qemu)
    if not args.no_qemu and names and qemu_path is None:
        notes.append(f"qemu: {args.qemu} not found; the qemu row is skipped "
                     "(Debian: apt-get install qemu-system-x86)")
    qemu = QemuRunner(qemu_path) if qemu_path else None
    micro_only = None if args.no_micro else args.micro
    meter = Meter(guest_runs(names, repeats, qemu) + (0 if args.no_micro else micro_runs(repeats, micro_only)))
    for n in notes:
        meter.note(n)
    try:
        report = {
            "schema": 2,
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "unicorn": unicorn.__version__,
                     "qemu": qemu_version(qemu_path) if qemu_path else None,
                     "machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()},
            "clock": "cpu",          # median_s, ratios and µs/op are CPU time; wall time is kept beside
            "repeats": repeats, "max_instructions": MAX_INSTRUCTIONS, "memory_mib": MEMORY_MIB,
            "baseline": BASELINE, "variants": variants(qemu is not None), "micro_variants": variants(),
            "targets": {"native_speed_vs_raw_uncounted": TARGET_NATIVE_VS_UNCOUNTED,
                        "trap_speed_vs_native": TARGET_TRAP_VS_NATIVE,
                        "trap_speed_vs_native_paged": TARGET_TRAP_VS_NATIVE_PAGED,
                        "hvm_speed_vs_native": TARGET_HVM_VS_NATIVE,
                        "native_over_qemu": TARGET_NATIVE_OVER_QEMU},
            "guests": bench_guests(names, repeats, anomalies, qemu, meter),
            "micro": {} if args.no_micro else bench_micro(repeats, anomalies, micro_only, args.k, meter),
            "notes": notes,
            "anomalies": anomalies,
        }
    finally:
        meter.clear()
        if qemu:
            qemu.close()
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
