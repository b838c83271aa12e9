"""The benchmark runner runs end to end: one round of one short guest, JSON written and sane."""
import io
import json

import pytest

from benchmarks.qemu import find_qemu
from benchmarks.run import MICRO_PAIRS, NOT_RUN_PAGING, Meter, iqr, main, render, summary_lines


def test_quick_run_writes_results_for_every_variant_and_notes_a_missing_qemu(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--quick", "--guest", "callret", "--no-micro", "--output", str(out),
                 "--qemu", "/nonexistent/qemu-system-i386"]) == 0
    report = json.loads(out.read_text())
    rows = report["guests"]["callret"]["variants"]
    # no qemu row, no crash; raw-fill where the C TLB fill was built
    assert {"native", "trap", "hvm", "raw", "raw-uncounted"} <= set(rows) <= {
        "native", "trap", "hvm", "raw", "raw-uncounted", "raw-fill"}
    assert rows["native"]["instructions"] == rows["raw"]["instructions"]
    assert rows["native"]["cpu_s"] and rows["native"]["wall_s"] and report["clock"] == "cpu"
    assert report["anomalies"] == []
    assert any("not found" in n for n in report["notes"])
    assert report["guests"]["callret"]["native_over_qemu"] is None
    table = capsys.readouterr().out
    assert "native speed" in table and "× raw-uncounted (target ≥ 0.75" in table
    assert "note: qemu: /nonexistent/qemu-system-i386 not found" in table


@pytest.mark.qemu
def test_qemu_row_is_timed_net_of_its_start_up(tmp_path, capsys):
    if find_qemu() is None:
        pytest.skip("qemu-system-i386 is not installed")
    out = tmp_path / "r.json"
    assert main(["--quick", "--guest", "portio", "--no-micro", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    guest = report["guests"]["portio"]
    qemu = guest["variants"]["qemu"]
    assert "qemu" in report["variants"] and report["host"]["qemu"].startswith("QEMU emulator")
    assert qemu["net_of_startup"] and len(qemu["startup_cpu_s"]) == 2      # before and after its run
    assert qemu["exit_code"] == 0 and qemu["instructions"] is None
    assert report["anomalies"] == []              # QEMU printed exactly native's console
    assert guest["native_over_qemu"] == pytest.approx(guest["variants"]["native"]["median_s"] / qemu["median_s"],
                                                      rel=1e-3)
    assert "native ÷ qemu" in capsys.readouterr().out


def test_quick_nanobenchmarks_print_a_row_per_operation(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--quick", "--no-guests", "--k", "100", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["anomalies"] == []
    assert set(report["micro"]) == {p.name for p in MICRO_PAIRS} >= {
        "syscall", "syscall_paged", "in", "cr0", "callret", "pgfault", "divzero", "ptemod", "tlbmiss"}
    assert report["micro"]["syscall"]["per_op_us"]["trap"]["exits_per_op"] == 2
    assert report["micro"]["pgfault"]["per_op_us"]["hvm"]["median"] is not None
    assert "qemu" not in report["micro"]["in"]["per_op_us"]     # start-up noise exceeds a loop
    table = capsys.readouterr().out
    assert "nanobenchmarks" in table and "not yet" not in table
    assert "syscall_paged" in table and "tlbmiss" in table


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_meter_rewrites_one_line_on_a_terminal():
    err = Terminal()
    meter = Meter(2, err)
    meter.begin("compute native round 1/1")
    meter.end("compute native round 1/1", "1.0 s")
    meter.begin("compute trap round 1/1")
    meter.clear()
    text = err.getvalue()
    assert "\n" not in text and text.count("\r\x1b[K") == 3
    assert "[1/2] compute native round 1/1" in text and "[2/2] compute trap" in text


def test_meter_writes_a_plain_line_per_measurement_elsewhere():
    err = io.StringIO()
    meter = Meter(2, err)
    for what in ("a", "b"):
        meter.begin(what)
        meter.end(what, "1.0 s")
    assert err.getvalue().splitlines() == ["[  1/2] a: 1.0 s", "[  2/2] b: 1.0 s"]
    assert "\r" not in err.getvalue()


def guest_summary(qemu_net: float, spread: float) -> dict:
    return {"native_speed_vs_raw_uncounted": 0.95, "native_speed_vs_raw": 1.9, "trap_speed_vs_native": 0.8,
            "hvm_speed_vs_native": 0.96, "native_over_qemu": 2.5, "counting_overhead": 2.0,
            "variants": {"qemu": {"median_s": qemu_net, "startup_spread_s": spread}}}


def test_summary_lines_give_each_ratio_and_the_issue_target_it_is_held_to():
    g = guest_summary(qemu_net=0.4, spread=0.03)
    lines = "\n".join(summary_lines("compute", g))
    assert "native speed = 0.950 × raw-uncounted (target ≥ 0.9: met)" in lines
    assert "trap speed = 0.800 × native (target ≥ 0.9: NOT met)" in lines
    assert "native ÷ qemu = 2.50 (QEMU net of its start-up) (target ≤ 2: NOT met)" in lines
    assert "hvm speed = 0.960 × native (target ≥ 0.95: met)" in lines
    assert "target" not in summary_lines("portio", g)[0]            # no target for portio
    assert "hvm speed = 0.960 × native\n" in "\n".join(summary_lines("portio", g)) + "\n"


def test_trap_is_held_to_issue_8s_target_on_the_paged_sieve():
    lines = "\n".join(summary_lines("compute_paged", guest_summary(qemu_net=0.4, spread=0.03)))
    assert "trap speed = 0.800 × native (target ≥ 0.8: met)" in lines


def test_a_variant_that_cannot_run_a_guest_is_listed_with_the_reason():
    row = {"median_s": 1.0, "ratio_to_native": 1.0, "instructions": 10, "exits": {}, "deterministic": True}
    guest = dict(guest_summary(qemu_net=0.4, spread=0.03), variants={"native": row},
                 not_run={"raw-fill": NOT_RUN_PAGING})
    report = {"host": {"unicorn": "2.1.4", "python": "3", "qemu": None}, "repeats": 1,
              "guests": {"compute_paged": guest}, "micro": {}, "anomalies": []}
    line = f"compute_paged    raw-fill               -        -             -  not run: {NOT_RUN_PAGING}"
    assert line in render(report)


def test_a_qemu_time_within_its_start_up_scatter_is_flagged_and_a_negative_one_gives_no_ratio():
    lines = "\n".join(summary_lines("portio", guest_summary(qemu_net=0.01, spread=0.03)))
    assert "native ÷ qemu = 2.50" in lines and "NOISY" in lines
    lines = "\n".join(summary_lines("portio", guest_summary(qemu_net=-0.01, spread=0.03)))
    assert "native ÷ qemu: not measurable here" in lines and "2.50" not in lines


def test_start_up_scatter_is_the_interquartile_range():
    assert iqr([0.06, 0.061, 0.062, 0.063, 0.2]) == pytest.approx(0.002)    # one outlier does not move it
    assert iqr([0.07]) == 0.0
