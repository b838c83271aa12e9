"""The hv command: the contract of DESIGN.md, and one clean line for every bad input."""
import json
import struct
import subprocess
import sys
from pathlib import Path


from hypervisor.image import build_image

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "guests" / "hello.S"


def hv(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "hypervisor", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(done, *words):
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for w in words:
        assert w in lines[0]


def test_run_streams_console_and_exits_with_guest_code():
    done = hv("run", HELLO, "--technique", "trap")
    assert done.returncode == 0
    assert done.stdout.startswith("hello\nHello from hvsim guest\n")


def test_run_json_last_line_has_the_contract_keys():
    done = hv("run", HELLO, "--json")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("console", "exit_code", "technique", "halted_reason", "instructions", "exits", "wall_s"):
        assert key in record
    assert record["exit_code"] == 0 and record["technique"] == "native"
    assert record["exits"]["io_instruction"] > 0


def test_trace_is_json_lines_naming_reason_handler_and_instruction(tmp_path):
    trace = tmp_path / "t.jsonl"
    hv("run", ROOT / "guests" / "timer.S", "-t", "trap", "--trace", trace)
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    hlts = [r for r in records if r["reason"] == "hlt"]
    assert len(hlts) == 5
    assert hlts[0]["insn_text"] == "hlt" and hlts[0]["insn_bytes"] == "f4"
    assert "ring 1" in hlts[0]["explanation"]


def test_build_writes_an_image_that_runs(tmp_path):
    out = tmp_path / "hello.bin"
    assert hv("build", HELLO, "-o", out).returncode == 0
    assert hv("run", out).stdout.startswith("hello\n")


def test_compare_shows_sensitive_lines_differ_under_trap():
    done = hv("compare", ROOT / "guests" / "sensitive.S", "--json")
    rows = {r["technique"]: r for r in json.loads(done.stdout)["rows"]}
    assert rows["native"]["same_console"] and not rows["trap"]["same_console"]
    assert rows["trap"]["first_difference"].startswith("line 3: 'sgdt")


def _image(tmp_path, data: bytes, name="k.bin"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_missing_image(tmp_path):
    assert_one_line_error(hv("run", tmp_path / "nope.bin"), "no such file")


def test_truncated_image(tmp_path):
    good = build_image(HELLO)
    assert_one_line_error(hv("run", _image(tmp_path, good[:40])))


def test_non_multiboot_image(tmp_path):
    assert_one_line_error(hv("run", _image(tmp_path, b"\x90" * 4096)), "multiboot")


def test_bad_checksum(tmp_path):
    good = bytearray(build_image(HELLO))
    good[8] ^= 1
    assert_one_line_error(hv("run", _image(tmp_path, bytes(good))))


def test_load_address_outside_ram(tmp_path):
    good = bytearray(build_image(HELLO))
    # a.out kludge: header_addr, load_addr, load_end, bss_end, entry follow magic/flags/checksum
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from("<5I", good, 12)
    shift = 0x10000000
    struct.pack_into("<5I", good, 12, header_addr + shift, load_addr + shift, load_end + shift,
                     bss_end + shift, entry + shift)
    assert_one_line_error(hv("run", _image(tmp_path, bytes(good))))


def test_unknown_technique():
    assert_one_line_error(hv("run", HELLO, "--technique", "magic"), "magic")


def test_unknown_option():
    assert_one_line_error(hv("run", HELLO, "--frobnicate"))


def test_bad_memory_size():
    assert_one_line_error(hv("run", HELLO, "--memory", "3"), "--memory")


def test_assembly_error(tmp_path):
    src = tmp_path / "bad.S"
    src.write_text("_start:\n    bogusinsn eax\n")
    assert_one_line_error(hv("run", src))


def test_pae_paging_under_trap_is_a_clear_error(tmp_path):
    src = tmp_path / "pg.S"
    src.write_text("_start:\n mov eax, cr4\n or eax, 0x20\n mov cr4, eax\n"
                   " mov eax, cr0\n or eax, 0x80000000\n mov cr0, eax\n hlt\n")
    assert_one_line_error(hv("run", src, "-t", "trap"), "PAE")


def test_help_teaches_the_techniques():
    done = hv("run", "--help")
    assert done.returncode == 0
    assert "trap-and-emulate" in done.stdout and "--max-instructions" in done.stdout


def test_unreadable_image(tmp_path):
    import socket
    path = tmp_path / "k.bin"              # a UNIX socket: it exists, but open() fails, even for root
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert_one_line_error(hv("run", path), "cannot read")


def test_run_dev_zero_is_one_line_not_a_memory_error():
    """The gap: `hv run /dev/zero` read until the host ran out of memory (MemoryError). The run
    gets 4 GiB of address space, so that a regression fails here instead of exhausting the host."""
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    done = subprocess.run([sys.executable, "-m", "hypervisor", "run", "/dev/zero"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit_memory)
    assert_one_line_error(done, "/dev/zero", "character device")


# -- hv translate ---------------------------------------------------------------------------------
SENSITIVE = ROOT / "guests" / "sensitive.S"


def test_translate_shows_the_entry_block_before_and_after():
    done = hv("translate", HELLO)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("guest block at 0x") and "translated at TC 0x" in out
    assert "indirect entry" in out and "IDENT" in out


def test_translate_json_names_every_guest_instruction_and_its_fate():
    entry = json.loads(hv("translate", SENSITIVE, "--json").stdout)
    assert entry["guest"] and entry["translated"] and entry["tc_bytes"] > 0
    target = next(row for row in entry["translated"] if row["note"].startswith("exit stub"))
    called = int(target["note"].split()[2], 16)
    block = json.loads(hv("translate", SENSITIVE, "--at", hex(called), "--json").stdout)
    kinds = {row["kind"] for row in block["guest"]}
    assert "callout" in kinds and all(row["why"] for row in block["guest"] if row["kind"] == "callout")
    assert sum(row["note"].startswith("callout") for row in block["translated"]) == \
        sum(row["kind"] == "callout" for row in block["guest"])


def test_translate_refuses_an_address_outside_ram_or_not_a_number_in_one_line():
    assert_one_line_error(hv("translate", HELLO, "--at", "0x7fffffff"), "outside the guest")
    assert_one_line_error(hv("translate", HELLO, "--at", "main"), "not an address")
