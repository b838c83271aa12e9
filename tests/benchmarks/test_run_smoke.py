"""The benchmark runner runs end to end: one round of one short guest, JSON written and sane."""
import json

from benchmarks.run import main


def test_quick_run_writes_results_for_every_variant(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--quick", "--guest", "callret", "--no-micro", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["guests"]["callret"]["variants"]
    assert {"native", "trap", "raw", "raw-uncounted"} <= set(rows)
    assert rows["native"]["instructions"] == rows["raw"]["instructions"]
    assert report["anomalies"] == []
    assert "native speed" in capsys.readouterr().out


def test_quick_nanobenchmarks_print_a_row_per_operation(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["--quick", "--no-guests", "--k", "100", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["anomalies"] == []
    assert {"syscall", "in", "cr0", "callret", "divzero", "pgfault", "ptemod"} <= set(report["micro"])
    assert report["micro"]["syscall"]["per_op_us"]["trap"]["exits_per_op"] == 2
    table = capsys.readouterr().out
    assert "nanobenchmarks" in table and "not yet" in table
