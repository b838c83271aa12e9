"""The floor every technique is measured against: the same kernel on a bare Unicorn, no VMM.

hvsim runs guests on Unicorn, so no technique can be faster than Unicorn itself running
the same instructions. This module is that baseline: one ``Uc``, RAM mapped, the
Multiboot image loaded and the CPU put in Multiboot's entry state exactly as
``PC.load_kernel`` does, and port I/O answered by the cheapest hooks that still let the
guest's runtime work (the UART always reports "transmitter empty", the scratch register
echoes, a write to isa-debug-exit stops the CPU). No run loop, no device bus, no exit
accounting.

Two runs are offered. ``count=N`` makes Unicorn count every instruction itself (a helper
call and an exit check per instruction): the benchmark's ``raw``, what exact counting costs
when the engine does it. ``count=0`` (Unicorn's "run until stopped") is the engine at full
speed, ``raw-uncounted``: the throughput reference issue 6 holds hvsim to (issue 6 moves
hvsim's own counting from ``count=`` to a count per translated block). Both time
``emu_start`` alone, in wall and CPU time.
"""
from __future__ import annotations

import ctypes
import inspect
import struct
import time
from dataclasses import dataclass

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc, UcError
from unicorn import x86_const as X

from hypervisor.image.multiboot import BOOT_MAGIC, MULTIBOOT_INFO_ADDR, multiboot_info, parse_kernel
from hypervisor.machine.cpu import Cpu, _private_offsets, exit_request_flag
from hypervisor.machine.native.tlbfill import TlbFill
from hypervisor.machine.pc import BOOT_CS, BOOT_DS, BOOT_GDT, BOOT_GDT_ADDR

COM1_DATA, COM1_LCR, COM1_LSR, COM1_SCRATCH = 0x3F8, 0x3FB, 0x3FD, 0x3FF
DEBUG_EXIT = 0xF4
LSR_IDLE = 0x60                 # THR empty and transmitter empty: putc never waits
UNTIL_NEVER = 1 << 40           # an end address EIP never reaches, as in the monitor
# The translation-cache size hvsim's Cpu asks for, so both runs use the same TCG setup.
TCG_BUFFER_MIB = inspect.signature(Cpu.__init__).parameters["tcg_buffer_mib"].default


@dataclass
class RawResult:
    wall_s: float                  # emu_start alone: setup is not timed (nor is it in hvsim's wall_s)
    cpu_s: float                   # the same span in this process's CPU time
    instructions: int | None       # Unicorn's own count; None when run uncounted
    console: bytes
    exit_code: int | None
    halted_reason: str


class _BareCpu:
    """What TlbFill asks of a CPU, for a bare ``Uc``."""

    def __init__(self, uc: Uc):
        self.uc = uc

    def read(self, reg: int) -> int:
        return self.uc.reg_read(reg)


def run_raw(image: bytes, memory_mib: int = 64, count: int = 0, tlb_fill: bool = False) -> RawResult:
    """Run a Multiboot image on a plain Unicorn; ``count=0`` runs it uncounted. ``tlb_fill``
    gives it hvsim's engine settings: the C TLB fill (machine/native/tlbfill.c), which keeps
    data stores off Unicorn's slow path, and no exit check after every memory access
    (``Cpu._exit_requests``): the fastest this engine runs the guest, the floor for native."""
    ram = memory_mib << 20
    kernel = parse_kernel(image, ram)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(TCG_BUFFER_MIB << 20)
    uc.mem_map(0, ram)
    for seg in kernel.segments:
        uc.mem_write(seg.paddr, seg.data + bytes(seg.memsz - len(seg.data)))
    uc.mem_write(MULTIBOOT_INFO_ADDR, multiboot_info(ram, MULTIBOOT_INFO_ADDR))
    uc.mem_write(BOOT_GDT_ADDR, b"".join(struct.pack("<Q", d) for d in BOOT_GDT))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, BOOT_GDT_ADDR, len(BOOT_GDT) * 8 - 1, 0))
    uc.reg_write(X.UC_X86_REG_CR0, 0x11)
    uc.reg_write(X.UC_X86_REG_CS, BOOT_CS)
    for seg_reg in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(seg_reg, BOOT_DS)
    uc.reg_write(X.UC_X86_REG_EAX, BOOT_MAGIC)
    uc.reg_write(X.UC_X86_REG_EBX, MULTIBOOT_INFO_ADDR)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
    uc.reg_write(X.UC_X86_REG_ESP, 0x7000)

    console = bytearray()
    state = {"scratch": 0, "dlab": 0, "exit": None, "stopped_at": None}
    counter = ctypes.c_uint64.from_address(uc._uch.value + _private_offsets()[0])

    def on_in(uc, port, size, _):
        if port == COM1_SCRATCH:
            return state["scratch"]
        return LSR_IDLE if port == COM1_LSR else 0

    def on_out(uc, port, size, value, _):
        if port == COM1_SCRATCH:
            state["scratch"] = value & 0xFF
        elif port == COM1_DATA:
            if not state["dlab"]:           # with DLAB set, port 0x3f8 is the divisor latch
                console.append(value & 0xFF)
        elif port == COM1_LCR:
            state["dlab"] = value & 0x80
        elif port == DEBUG_EXIT:
            state["exit"] = value
            state["stopped_at"] = counter.value      # as Cpu.stop: the count at the stop request
            uc.emu_stop()

    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    if tlb_fill:
        TlbFill(_BareCpu(uc), native=True)     # the benchmark guests never turn paging on
        flag = exit_request_flag()
        if flag is not None and not count:
            ctypes.c_uint8.from_address(uc._uch.value + flag).value = 1

    reason = "stopped"
    started, started_cpu = time.perf_counter(), time.process_time()
    try:
        uc.emu_start(kernel.entry, UNTIL_NEVER, count=count)
    except UcError as e:
        reason = f"crash: {e}"
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu

    instructions = None
    if count:
        instructions = min(counter.value, count, state["stopped_at"] or count)
    if state["exit"] is not None:
        reason = f"guest wrote {state['exit']:#x} to isa-debug-exit"
    elif reason == "stopped":
        reason = ("runaway: count exhausted" if count and instructions == count
                  else "returned without an exit (hlt?)")
    return RawResult(wall, cpu, instructions, bytes(console), state["exit"], reason)
