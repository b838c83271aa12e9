"""The fuzzer (hypervisor/fuzz/): its guests are real, reproducible kernels, its harness sees
every failure kind, and a few hundred random streams under native and trap break no promise.

`make fuzz` runs ten thousand streams per technique; this file runs a few hundred, so that
a change that lets a hostile guest raise a traceback, kill the process, overrun its budget
or hang is caught by the suite.
"""
import hashlib
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from hypervisor.fuzz import FailureKind, RunRecord, Summary, disassemble, generate, run_stream
from hypervisor.fuzz.campaign import campaign, run_batch, signature
from hypervisor.fuzz.guest import from_chunks
from hypervisor.fuzz.layout import ENTRY, LOAD, MONITOR_AREA, STREAM
from hypervisor.fuzz.run import categorize
from hypervisor.image.multiboot import parse_kernel
from hypervisor.session import run_image

RAM = 64 << 20
TECHNIQUES = ("native", "trap")


# -- the generator -----------------------------------------------------------------------------
def test_a_stream_is_a_pure_function_of_seed_and_index():
    assert generate(7, 3) == generate(7, 3)
    assert generate(7, 3).image != generate(7, 4).image
    assert generate(7, 3).image != generate(8, 3).image


def test_a_stream_is_the_same_in_another_process():
    """What makes `--replay SEED:INDEX` replay what a worker process ran."""
    code = "from hypervisor.fuzz import generate; import hashlib; print(hashlib.sha1(generate(5, 11).image).hexdigest())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == hashlib.sha1(generate(5, 11).image).hexdigest()


@pytest.mark.parametrize("index", range(40))
def test_every_stream_is_a_multiboot_kernel_loaded_at_1mib(index):
    stream = generate(3, index)
    kernel = parse_kernel(stream.image, RAM)
    assert kernel.entry == ENTRY
    assert [(s.paddr, s.data) for s in kernel.segments] == [(LOAD, stream.image)]
    assert STREAM <= stream.chunks[0] < stream.stream_end <= LOAD + len(stream.image)


def test_streams_reach_the_instructions_a_monitor_must_get_right():
    templates = " ".join(p.template for i in range(300) for p in generate(1, i).pieces)
    for needed in ("iretd to 0x1b", "lgdt", "lidt", "ltr", "lldt", "mov cr0", "mov cr3", "mov dr", "rdmsr",
                   "wrmsr", "port I/O", "sysenter", "paging on", "write gdt", "write idt", "jmp far",
                   "call far", "retf", "pop ss", "mov ss", "cli/sti", "pushf/popf", "random bytes"):
        assert needed in templates, needed
    addresses = [int(p.template.split()[-1], 16) for i in range(300) for p in generate(1, i).pieces
                 if p.template.startswith("memory access at")]
    assert any(MONITOR_AREA[0] <= a < MONITOR_AREA[1] for a in addresses)
    assert any(RAM <= a < MONITOR_AREA[0] for a in addresses)


def test_disassembly_names_each_template_and_its_instructions():
    lines = disassemble(generate(1, 0))
    assert lines[0] == "chunk 0:"
    assert any(line.startswith("  ; ") for line in lines)
    assert "ud2" in lines[-1]


# -- the guest's prologue catches every event and resumes the stream ------------------------------
def _ring3_chunk(address: int) -> bytes:
    """iretd to ring 3 at the next instruction, which is `cli` (a #GP there)."""
    frame_size = 5 * 5 + 1
    push = lambda v: b"\x68" + v.to_bytes(4, "little")   # noqa: E731
    return push(0x23) + push(0x106F00) + push(0x202) + push(0x1B) + push(address + frame_size) + b"\xcf" + b"\xfa"


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_the_handler_logs_each_vector_and_resumes_at_the_next_chunk(technique):
    chunks = [b"\x0f\x0b", b"\xcc", b"\xcd\x80", b"\x31\xc9\xf7\xf1"]          # ud2, int3, int 0x80, div 0
    stream = from_chunks(chunks + [_ring3_chunk(STREAM + sum(map(len, chunks)))])
    result = run_image(stream.image, technique=technique, max_instructions=20_000)
    assert result.console == bytes([6, 3, 0x80, 0, 13])              # #UD, #BP, 0x80, #DE, #GP
    assert result.exit_code == 0                                     # after the last chunk's event


@pytest.mark.qemu
def test_the_handler_guest_prints_the_same_on_the_bare_machine(tmp_path):
    """The fuzz guests are real kernels: QEMU boots one and sees the same events."""
    from tests.qemu import run_qemu
    chunks = [b"\x0f\x0b", b"\xcc", b"\xcd\x80", b"\x31\xc9\xf7\xf1"]
    image = tmp_path / "fuzz.bin"
    image.write_bytes(from_chunks(chunks + [_ring3_chunk(STREAM + sum(map(len, chunks)))]).image)
    assert run_qemu(image) == (bytes([6, 3, 0x80, 0, 13]), 0)


# -- the judge ---------------------------------------------------------------------------------
def test_halted_reasons_are_counted_with_their_numbers_blanked():
    assert categorize("guest wrote 0x0 to isa-debug-exit") == "guest wrote N to isa-debug-exit"
    assert categorize("runaway: stopped at --max-instructions 20000 (EIP 0x00108000)") == \
        "runaway: stopped at --max-instructions N (EIP N)"
    assert categorize(None) == "(none)"


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_run_past_its_wall_clock_limit_is_a_timeout(technique):
    stream = from_chunks([b"\xe6\x80\xeb\xfc"])         # l: out 0x80, al; jmp l (an exit each time)
    record = run_stream(stream, technique, budget=50_000_000, timeout_s=0.05)
    assert record.failure is FailureKind.TIMEOUT


def test_failures_group_by_error_and_the_vmm_functions_it_came_through():
    def failure(case, where, trigger):
        return {"kind": "exception", "technique": "trap", "case": case, "outcome": "exception: IndexError",
                "detail": "IndexError: guest-physical 0xffc00000+8 is outside RAM", "trigger": trigger, "where": where}
    a = failure("1:2", "memory.py:read < interrupts.py:_gate", "0x0010008d (CS 0x9): 0f 01 15  lgdt [0x100c02]")
    b = failure("1:9", "memory.py:read < interrupts.py:_gate", "0x00108000 (CS 0x9): 8e d0  mov ss, eax")
    c = failure("1:5", "memory.py:read < emulate.py:lgdt", "0x00108000 (CS 0x9): 0f 01 15  lgdt [0x108000]")
    assert signature(a) == signature(b) != signature(c)
    groups = Summary(1, 100, 1.0, failures=[a, b, c]).distinct()
    assert [g["cases"] for g in groups] == [["1:2", "1:9"], ["1:5"]]
    assert groups[0]["instructions"] == {"lgdt": 1, "mov": 1}


# -- campaigns survive their workers ----------------------------------------------------------------
def _fake_worker(script: str):
    return lambda first, stop: [sys.executable, "-c", script.replace("FIRST", str(first))]


def test_a_worker_that_aborts_is_reported_with_the_stream_it_was_running():
    records: list[RunRecord] = []
    script = ("import json, os, signal; print(json.dumps({'start': FIRST}), flush=True); "
              "os.kill(os.getpid(), signal.SIGABRT)")
    run_batch(9, "native", 5, 7, 100, 1.0, records.append, command=_fake_worker(script))
    assert [(r.index, r.failure) for r in records] == [(5, FailureKind.ABORT), (6, FailureKind.ABORT)]
    assert "SIGABRT" in records[0].detail


def test_a_silent_worker_is_killed_and_reported_as_a_hang():
    records: list[RunRecord] = []
    script = "import json, time; print(json.dumps({'start': FIRST}), flush=True); time.sleep(60)"
    run_batch(9, "trap", 3, 4, 100, 0.1, records.append, command=_fake_worker(script), grace_s=0.5)
    assert [(r.index, r.failure) for r in records] == [(3, FailureKind.HANG)]


def test_a_campaign_runs_every_stream_under_every_technique_in_workers():
    summary = campaign(seed=2, count=3, techniques=TECHNIQUES, workers=2, progress=False)
    assert summary.streams == {"native": 3, "trap": 3}
    assert sum(summary.outcomes["trap"].values()) == 3
    assert json.loads(json.dumps(summary.as_json()))["seed"] == 2


def test_replay_prints_the_stream_and_its_run_under_each_technique(capsys):
    from hypervisor.fuzz.replay import replay
    replay("1:0", ["native", "trap"], 20_000, 5.0)
    out = capsys.readouterr().out
    assert out.startswith("stream 1:0: ")
    assert "chunk 0:" in out and "\nnative: " in out and "\ntrap: " in out


# -- the property: hostile streams break no promise --------------------------------------------------
def _fuzz(technique: str, seed: int, index: int) -> None:
    record = run_stream(generate(seed, index), technique)
    assert record.failure is None, (
        f"{record.failure.value} under {technique} on stream {seed}:{index} "
        f"(replay: python -m hypervisor.fuzz --replay {seed}:{index} --technique {technique})\n"
        f"{record.trigger}\n{record.detail}")
    assert record.instructions <= 20_000


FUZZ_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                         phases=(Phase.explicit, Phase.generate),     # shrinking a seed means nothing
                         suppress_health_check=[HealthCheck.too_slow])


@FUZZ_SETTINGS
@given(seed=st.integers(0, 2 ** 16), index=st.integers(0, 2 ** 20))
@example(seed=23, index=739)        # a block still in the TLB that the page tables no longer map
@example(seed=1, index=5571)        # cut blocks left unsettled: the run ended past its budget
def test_random_streams_under_native_break_no_promise(seed, index):
    _fuzz("native", seed, index)


@FUZZ_SETTINGS
@given(seed=st.integers(0, 2 ** 16), index=st.integers(0, 2 ** 20))
@example(seed=1, index=2186)        # cut blocks left unsettled: the run ended past its budget
@example(seed=1, index=9262)
def test_random_streams_under_trap_break_no_promise(seed, index):
    _fuzz("trap", seed, index)
