"""`hv bench` is `make bench`: the same runner, the same flags, from the installed command."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hv(*args, cwd=ROOT):                 # from ROOT: this tree's package, whatever is installed
    return subprocess.run([sys.executable, "-m", "hypervisor", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_hv_bench_runs_the_benchmark_runner_with_its_flags(tmp_path):
    out = tmp_path / "r.json"
    done = hv("bench", "--quick", "--no-guests", "--micro", "cr0", "--k", "50", "--output", out)
    assert done.returncode == 0, done.stderr
    assert "nanobenchmarks" in done.stdout and "cr0" in done.stdout
    assert json.loads(out.read_text())["micro"]["cr0"]["k"] == 50


def test_hv_bench_help_is_the_runners_and_a_bad_flag_is_a_usage_error():
    helped = hv("bench", "--help")
    assert helped.returncode == 0 and "usage: hv bench" in helped.stdout and "--no-qemu" in helped.stdout
    bad = hv("bench", "--no-such-flag")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_hv_help_lists_bench():
    assert "bench" in hv("--help").stdout
