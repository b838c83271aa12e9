"""The physical CPU: one Unicorn instance, and the few tricks it takes to drive it as a VMM would.

Unicorn is a CPU emulator, not a virtualization extension, so what a real monitor gets
from the hardware has to be built here, once, for every technique:

* **fast register access.** The Python binding costs 2-4 µs per register; an exit
  reads several. We call ``uc_reg_read``/``uc_reg_write`` through ctypes directly.
* **QEMU's private CPU state.** Unicorn hides what a monitor most needs to see: how many
  instructions ran (``uc->emu_counter``), the error code of the exception being raised
  (``env->error_code``: no register exposes it), the interrupt shadow after ``sti``,
  ``mov ss`` and ``pop ss`` (``HF_INHIBIT_IRQ_MASK`` in ``env->hflags``), and the
  exception in flight (``env->old_exception``). ``private_layout()`` finds every one of
  them at start-up by experiment on a scratch CPU (a known count, two faults with known
  error codes, a stop inside a ``sti`` shadow), and finds the live ``CPUX86State``
  behind ``uc->cpu`` (read safely through /proc/self/mem). Nothing is hard-coded, and a
  library whose layout differs makes the probe fail with a ``CpuError``, not a wrong
  answer. Reading a field then costs ~0.1 µs; a ``context_save`` would cost ~3 µs.
* **fault recovery.** Unicorn hands every exception to a hook and never runs QEMU's
  ``do_interrupt``, which is what resets ``env->old_exception``. Left alone, a second
  trapped fault is escalated to #DF and a third silently stops the CPU. After each
  trapped fault we reset that field (``forget_fault``). Nor does Unicorn end an interrupt
  shadow when an exception interrupts the shadowed instruction: whoever delivers the
  exception calls ``clear_interrupt_shadow``.
* **changing CPL from outside.** Writing CS does not change the privilege level: QEMU
  keeps the CPL in hflags, checks each segment load against it, and sets it from SS's
  DPL when SS is loaded. ``load_ring`` (and ``enter_ring0``) set the CPL first, then load
  SS and CS, as the hardware's own far transfer does: a monitor "teleports" into a
  handler at any ring without running any code of its own, and without touching CR0
  (clearing CR0.PE for a real-mode SS load also works, but flushes the TLB each time).
* **the segment caches in place.** GDTR, IDTR, LDTR, TR and the six segment registers
  are QEMU SegmentCache structures inside env; ``segment_layout`` finds them by
  experiment, and ``Cpu`` reads and writes them directly (~0.1 µs, where the binding's
  tuples cost ~4.5 µs), base, limit and the flags iret checks.
* **TR and LDTR as QEMU caches them.** ``set_segment_register`` takes QEMU's cache
  flags: the descriptor's high dword masked with 0x00F0FF00 (P is bit 15, the type bits
  8-11), not the access byte. A TSS is cached *available* (type 9, flags 0x8900), as
  QEMU's own ``ltr`` leaves it: a call gate or interrupt that needs the TSS stack makes
  QEMU abort the whole process (SIGABRT, "invalid tss") when P is clear or the type is
  busy. ``descriptors.unicorn_flags`` builds the word.

What Unicorn 2.1.4 does with the rest of the machine (measured; tests/machine/test_cpu.py
pins each point so that a library upgrade that changes one is caught):

* ``sysenter`` and ``syscall`` only call UC_HOOK_INSN hooks (EIP on the instruction) and
  then add the instruction's length to EIP, at every CPL, whatever the MSRs and EFER say:
  a hook that writes EIP gets 2 bytes added to its value. ``sysexit`` and ``sysret`` are
  QEMU's own and cannot be hooked: sysexit is #GP(0) unless CPL 0 with SYSENTER_CS set;
  sysret is #UD with EFER.SCE clear (to UC_HOOK_INSN_INVALID), else #GP(0) above CPL 0.
  qemu-system-i386 differs: sysenter enters ring 0 through the MSRs (#GP(0) when
  SYSENTER_CS is 0), syscall and sysret are always #UD.
* A UC_HOOK_MEM_WRITE_PROT hook sees the physical address, size (1-8: wider stores come
  in 8-byte pieces) and value (signed in the Python binding) with EIP on the instruction.
  On a page write-protected with ``mem_protect`` (also part of a ``mem_map_ptr`` region,
  which splits and stays over the same host memory), returning True completes the
  instruction (flags, ESP, a ``rep``'s ECX/EDI) but drops the store itself: the monitor
  writes the value into the frame and the store has happened (~0.65 µs per trapped store
  with a minimal hook). Where ``mem_map_ptr`` itself gave read-only, the store lands.
  Returning False stops emu_start with UC_ERR_WRITE_PROT, EIP on the instruction and
  nothing of it done: restartable. The page walker's accessed/dirty-bit writes to a
  protected page are dropped silently, with no hook.
* ``emu_stop`` from a UC_HOOK_BLOCK hook stops *before* that block runs (EIP = its start).
"""
from __future__ import annotations

import ctypes
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

# The registers an exit handler touches, by Unicorn id.
EAX, ECX, EDX, EBX = X.UC_X86_REG_EAX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX, X.UC_X86_REG_EBX
ESP, EBP, ESI, EDI = X.UC_X86_REG_ESP, X.UC_X86_REG_EBP, X.UC_X86_REG_ESI, X.UC_X86_REG_EDI
EIP, EFLAGS = X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS
CS, SS, DS, ES, FS, GS = (X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS,
                          X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
CR0, CR2, CR3, CR4 = X.UC_X86_REG_CR0, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4
GDTR, IDTR, LDTR, TR = X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR, X.UC_X86_REG_TR

# x86 register numbers (ModRM order) to Unicorn ids, for the decoder/emulator.
GPR_BY_NAME = {"eax": EAX, "ecx": ECX, "edx": EDX, "ebx": EBX,
               "esp": ESP, "ebp": EBP, "esi": ESI, "edi": EDI}
SEG_BY_NAME = {"cs": CS, "ss": SS, "ds": DS, "es": ES, "fs": FS, "gs": GS}
# 16-bit names as capstone prints them (``lmsw ax``, ``mov ss, ax``), to their 32-bit registers.
WIDE_NAME = {"ax": "eax", "bx": "ebx", "cx": "ecx", "dx": "edx", "si": "esi", "di": "edi",
             "bp": "ebp", "sp": "esp"}

CR0_PE = 1 << 0
# blockhook.STOP_*: why the block hook stopped the CPU before a block.
_STOP_DEADLINE, _STOP_UNKNOWN, _STOP_CROSSING, _STOP_IO, _STOP_ALIGN, _STOP_WATCH = 1, 3, 4, 5, 7, 8
# Port I/O, as capstone names it (after any rep prefix).
_IO_MNEMONICS = frozenset(("in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd"))
# Legacy SSE instructions whose 16-byte memory operand may be misaligned (QEMU 7.2's
# X86_VEX_SSEUnaligned); every other one with an ``xmmword`` operand raises #GP(0) for a
# misaligned linear address (SDM vol. 1, 15.7; VEX forms do not, and are not checked).
_SSE_UNALIGNED = frozenset(("movups", "movupd", "movdqu", "lddqu",
                            "pcmpestri", "pcmpestrm", "pcmpistri", "pcmpistrm"))
EFLAGS_IF = 1 << 9
EFLAGS_IOPL = 3 << 12


# Our own handle on the library, with no argtypes: ctypes then skips argument conversion, which
# makes a register access ~0.25 µs instead of ~0.65 µs through the binding's prototypes.
_lib = ctypes.CDLL(uclib._name)
_reg_read, _reg_write = _lib.uc_reg_read, _lib.uc_reg_write
_reg_read.restype = _reg_write.restype = ctypes.c_int
_reg_read_batch, _reg_write_batch = _lib.uc_reg_read_batch, _lib.uc_reg_write_batch
_reg_read_batch.restype = _reg_write_batch.restype = ctypes.c_int


class _Batch:
    """Preallocated arguments of ``uc_reg_read_batch``/``uc_reg_write_batch`` for one tuple of
    registers: one ctypes call for the lot (~0.2 µs a register fewer than one call each)."""

    def __init__(self, regs: tuple[int, ...]):
        n = len(regs)
        self.count = n
        self.ids = (ctypes.c_int * n)(*regs)
        self.values = (ctypes.c_uint64 * n)()
        self.pointers = (ctypes.c_void_p * n)(*(ctypes.addressof(self.values) + 8 * i for i in range(n)))


_NO_PASS = (1 << 64) - 1                 # blockhook.NO_PASS


def _is_watched(watched: frozenset[str], narrowed, name: str, op_str: str, raw: bytes) -> bool:
    """Is this instruction one of ``watched``? A far jmp or call through memory is ``jmp far``
    or ``call far`` there (capstone names it ``jmp``/``call`` with a ``ptr`` operand of no size).
    A mnemonic with a test in ``narrowed`` is watched only where the test passes on its bytes."""
    if name in watched:
        test = narrowed.get(name)
        return test is None or test(raw)
    return name in ("jmp", "call") and op_str.startswith("ptr ") and f"{name} far" in watched


# The watched instructions after which QEMU 5.0 (Unicorn's target/i386/translate.c) ends its
# translated block (gen_eob): they change state the translation depends on (CR0, CR4, the
# TLB) or jump away. A mov *from* a CR, rdmsr and wrmsr do not end it.
_LAST_IN_BLOCK = frozenset({"invlpg", "ljmp", "lcall", "iret", "iretd", "clts", "lmsw"})


def _ends_block(name: str, op_str: str) -> bool:
    """Does QEMU end its translated block right after this instruction (capstone's name and operands)?"""
    if name == "mov":
        return op_str.startswith("cr")          # mov crN, reg; not mov reg, crN
    if name in ("jmp", "call"):
        return op_str.startswith("ptr ")        # the far forms through memory
    return name in _LAST_IN_BLOCK


def _needs_alignment(mnemonic: str) -> bool:
    """Does this legacy SSE instruction (capstone's mnemonic; its operand is an ``xmmword``)
    raise #GP(0) for a misaligned memory operand? VEX forms (``v...``) do not."""
    name = mnemonic.split()[-1]
    return not name.startswith("v") and name not in _SSE_UNALIGNED


class UnreadableCode(Exception):
    """The CPU runs a translated block whose code the monitor cannot read through the guest's
    page tables now (a translation they no longer give, still in the TLB), so it cannot split
    the block at an instruction boundary: the run ends there, as a clean guest crash."""


class CpuError(RuntimeError):
    """Unicorn refused something the monitor asked of it: a VMM bug, not a guest's fault."""


# QEMU's hflags bits (target/i386/cpu.h of the QEMU 5.0 inside Unicorn 2); the probe checks them.
HF_CPL_MASK = 3 << 0
HF_INHIBIT_IRQ_MASK = 1 << 3     # the sti / mov ss interrupt shadow
HF_PE_MASK = 1 << 7
# hflags2, the word after hflags in CPUX86State: NMIs blocked from an NMI's delivery to the next
# iret, which clears the bit in QEMU's helper_iret_protected (tests/machine/test_cpu_state.py).
HF2_NMI_MASK = 1 << 2

_GPRS = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI)
_RING_ENTRY = (SS, CS, ESP, EFLAGS, EIP)
_DATA_SEGMENTS = (ES, DS, FS, GS)
_DESC_CS, _DESC_C = 1 << 11, 1 << 10      # in a segment cache's flags: code, conforming
# Two selectors past the probe GDT's limit: loading one into DS is #GP(selector & 0xFFFC).
_PROBE_SELECTORS = (0x0FFB, 0x1233)


@dataclass(frozen=True)
class PrivateLayout:
    """Where Unicorn keeps what it does not expose; byte offsets, found by ``private_layout``."""
    counter: int          # uc_struct: emu_counter (u64)
    cpu_pointer: int      # uc_struct: uc->cpu, the CPU object
    cpu_env: int          # CPU object: its CPUX86State ("env")
    context_env: int      # saved context (``ctx.context.value``): where its copy of env begins
    hflags: int           # env: hflags (u32, HF_* bits)
    error_code: int       # env: error_code (i32), set by every exception QEMU raises
    old_exception: int    # env: old_exception (i32), -1 when no exception is in flight
    eflags: int           # env: eflags (u32 low half), where QEMU keeps IF, IOPL, TF (not the arithmetic flags)


@lru_cache(maxsize=None)
def private_layout() -> PrivateLayout:
    """Find the private fields by experiment on a scratch CPU, once per process.

    The library build fixes them, so each is found by making it take known values and
    looking for those values, never by trusting an offset read from a header.
    """
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks  # only needed for this probe
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    uc = _scratch_cpu()
    uc.mem_map(0, 0x10000)
    counter = _probe_counter(uc, ks)
    cpu_pointer, cpu_env, context_env = _probe_env(uc)
    hflags = _probe_hflags(uc, context_env)
    error_code, old_exception = _probe_faults(uc, context_env, hflags)
    eflags = _probe_eflags(uc, context_env)
    return PrivateLayout(counter, cpu_pointer, cpu_env, context_env, hflags, error_code, old_exception, eflags)


def _probe_eflags(uc: Uc, context_env: int) -> int:
    """env->eflags: write EFLAGS with IF and IOPL in three patterns; one word follows them."""
    patterns = (0x2, 0x202, 0x3002)
    states = []
    for value in patterns:
        uc.reg_write(EFLAGS, value)
        states.append(_context_bytes(uc.context_save())[context_env:])
    u32 = struct.Struct("<I").unpack_from
    found = [o for o in range(0, 0x400, 4)
             if all(u32(state, o)[0] & 0x3200 == value & 0x3200 for state, value in zip(states, patterns))]
    if len(found) != 1:
        raise CpuError(f"cannot locate eflags in the CPU state (candidates {found})")
    return found[0]


def _private_offsets() -> tuple[int, int]:
    """(emu_counter offset in uc_struct, old_exception offset in a saved context)."""
    layout = private_layout()
    return layout.counter, layout.context_env + layout.old_exception


def _scratch_cpu() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(4 << 20)      # not the default 1 GiB of address space
    return uc


@lru_cache(maxsize=None)
def invalid_address_offset() -> int:
    """Offset in uc_struct of ``invalid_addr``: the exact address of the access whose TLB fill a
    UC_HOOK_TLB_FILL callback refused (the callback itself is told only the page).

    Found on a scratch CPU whose fill refuses one page: a load at 0x5ffe refused on page
    0x5000, then the same load refused on page 0x6000 (its second page, which QEMU fills at
    0x6000); the one u64 that holds 0x5ffe after the first run and 0x6000 after the second.
    """
    from unicorn import UC_HOOK_TLB_FILL, UC_TLB_VIRTUAL
    uc = _scratch_cpu()
    uc.mem_map(0, 0x10000)
    refused = [0]

    def fill(_uc, vaddr, _type, entry, _data):
        if vaddr == refused[0]:
            return False
        entry.paddr, entry.perms = vaddr, 7
        return True

    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.mem_write(0x1000, b"\x8b\x1d\xfe\x5f\x00\x00\xf4")      # mov ebx, [0x5ffe]; hlt
    found = None
    for page, expected in ((0x5000, 0x5FFE), (0x6000, 0x6000)):
        refused[0] = page
        uc.ctl_flush_tb()
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)             # (a mode change flushes the TLB)
        try:
            uc.emu_start(0x1000, 0x2000)
        except UcError:
            pass
        state = _peek(uc._uch.value, 0x4000) or b""
        here = {o for o in range(0, len(state) - 8, 8) if struct.unpack_from("<Q", state, o)[0] == expected}
        found = here if found is None else found & here
    if not found or len(found) != 1:
        raise CpuError(f"cannot locate uc->invalid_addr (candidates {sorted(found or ())})")
    return found.pop()


def _peek(address: int, size: int) -> bytes | None:
    """Host memory at a pointer we do not trust yet: None where nothing is mapped."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError as exc:
        raise CpuError(f"cannot read /proc/self/mem to find the CPU state: {exc}") from None
    try:
        return os.pread(fd, size, address)
    except OSError:
        return None
    finally:
        os.close(fd)


def _context_bytes(ctx) -> bytes:
    return ctypes.string_at(ctx.context.value, ctx.size)


def _probe_counter(uc: Uc, ks) -> int:
    """emu_counter: run 12345 then 54321 counted instructions and find the u64 that says so."""
    uc.mem_write(0x1000, bytes(ks.asm("l: inc eax; jmp l", 0x1000)[0]))
    words = (ctypes.c_uint64 * 0x800).from_address(uc._uch.value)
    uc.emu_start(0x1000, 0, count=12345)
    first = [i * 8 for i in range(0x800) if words[i] == 12346]
    uc.emu_start(0x1000, 0, count=54321)
    counter = [o for o in first if words[o // 8] == 54322]
    if len(counter) != 1:
        raise CpuError(f"cannot locate Unicorn's instruction counter (candidates {counter})")
    return counter[0]


def _probe_env(uc: Uc) -> tuple[int, int, int]:
    """(uc->cpu in uc_struct, env in the CPU object, env in a saved context).

    A saved context is a copy of env, which begins with the general registers: eight
    distinct values written to them locate env in the context and, following each
    pointer in uc_struct, in live memory. /proc/self/mem reads a wild pointer as an
    error instead of a crash.
    """
    values = [0x13579BDF + i * 0x01020304 for i in range(8)]
    for reg, value in zip(_GPRS, values):
        uc.reg_write(reg, value)
    signature = struct.pack("<8Q", *values)
    context_env = _context_bytes(uc.context_save()).find(signature)
    if context_env < 0:
        raise CpuError("cannot locate the registers in a saved context")
    words = (ctypes.c_uint64 * 0x800).from_address(uc._uch.value)
    found = []
    for i in range(0x800):
        pointer = words[i]
        if pointer < 0x10000 or pointer >= 1 << 47 or pointer & 7:
            continue
        at = (_peek(pointer, 0x20000) or b"").find(signature)
        if at >= 0 and at % 8 == 0:
            found.append((i * 8, at))
    # Other words may point at unrelated heap blocks that happen to lie before this CPU: keep
    # the pointer that finds the registers in fresh instances too, the closest one first.
    for cpu_pointer, cpu_env in sorted(found, key=lambda candidate: candidate[1]):
        if all(_env_at(scratch, cpu_pointer, cpu_env) is not None
               for scratch in (uc, _scratch_cpu(), _scratch_cpu())):
            return cpu_pointer, cpu_env, context_env
    raise CpuError(f"cannot locate the live CPU state (candidates {found})")


def _env_at(uc: Uc, cpu_pointer: int, cpu_env: int) -> int | None:
    """The address of ``uc``'s live CPU state if it is where the layout says, else None."""
    uc.reg_write(EAX, 0x2468ACE0)          # (the first call also makes Unicorn build its CPU)
    env = ctypes.c_uint64.from_address(uc._uch.value + cpu_pointer).value + cpu_env
    found = _peek(env, 4) == struct.pack("<I", 0x2468ACE0)
    uc.reg_write(EAX, 0)
    return env if found else None


def _probe_hflags(uc: Uc, context_env: int) -> int:
    """hflags: stop inside a ``sti`` shadow and just after it; only HF_INHIBIT_IRQ differs."""
    uc.mem_write(0x2000, b"\xfb\x90\x90")    # sti; nop; nop
    uc.reg_write(EFLAGS, 0x2)
    uc.emu_start(0x2000, 0, count=1)
    inside = _context_bytes(uc.context_save())[context_env:]
    uc.emu_start(0x2001, 0, count=1)
    after = _context_bytes(uc.context_save())[context_env:]
    found = [o for o in range(0, 0x400, 4)
             if struct.unpack_from("<I", inside, o)[0] ^ struct.unpack_from("<I", after, o)[0]
             == HF_INHIBIT_IRQ_MASK]
    if len(found) != 1:
        raise CpuError(f"cannot locate hflags in the CPU state (candidates {found})")
    return found[0]


def _probe_faults(uc: Uc, context_env: int, hflags: int) -> tuple[int, int]:
    """(error_code, old_exception): two trapped #GPs at CPL 3 with known error codes.

    ``mov ds`` with a selector past the GDT limit raises #GP(selector & 0xFFFC); before
    the fault old_exception is -1, inside the hook 13. The hook also sees CPL 3 and PE in
    hflags, which checks the bits this file relies on.
    """
    gdt = (b"\0" * 8 + struct.pack("<Q", 0x00CF9A000000FFFF) + struct.pack("<Q", 0x00CF92000000FFFF)
           + struct.pack("<Q", 0x00CFFA000000FFFF) + struct.pack("<Q", 0x00CFF2000000FFFF))
    uc.mem_write(0x500, gdt)
    uc.reg_write(GDTR, (0, 0x500, len(gdt) - 1, 0))
    uc.reg_write(CR0, 0x11)
    uc.reg_write(CS, 0x08)
    uc.reg_write(SS, 0x10)
    uc.mem_write(0x2000, b"\xcf")            # iretd
    for i, selector in enumerate(_PROBE_SELECTORS):
        uc.mem_write(0x3000 + 0x10 * i, b"\xb8" + struct.pack("<I", selector) + b"\x8e\xd8")  # mov ds
    uc.reg_write(ESP, 0x9000)
    before = uc.context_save()
    seen = []

    def on_fault(uc, intno, _):
        seen.append((intno, uc.context_save()))
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_fault)
    for i in range(len(_PROBE_SELECTORS)):
        uc.context_restore(before)
        uc.mem_write(0x9000, struct.pack("<5I", 0x3000 + 0x10 * i, 0x1B, 2, 0x8000, 0x23))
        uc.emu_start(0x2000, 0, count=10)
    if [intno for intno, _ in seen] != [13] * len(_PROBE_SELECTORS):
        raise CpuError(f"the fault probe raised {[intno for intno, _ in seen]}, not two #GPs")
    a = _context_bytes(before)[context_env:]
    faults = [_context_bytes(ctx)[context_env:] for _, ctx in seen]
    i32 = struct.Struct("<i").unpack_from
    error = [o for o in range(0, len(a) - 3, 4)
             if all(i32(f, o)[0] == sel & 0xFFFC for f, sel in zip(faults, _PROBE_SELECTORS))]
    old = [o for o in range(0, len(a) - 3, 4) if i32(a, o)[0] == -1 and i32(faults[0], o)[0] == 13]
    if len(error) != 1:
        raise CpuError(f"cannot locate error_code in the CPU state (candidates {error})")
    if len(old) != 1:
        raise CpuError(f"cannot locate old_exception in the CPU state (candidates {old})")
    flags = i32(faults[0], hflags)[0]
    if flags & HF_CPL_MASK != 3 or not flags & HF_PE_MASK or flags & HF_INHIBIT_IRQ_MASK:
        raise CpuError(f"hflags {flags:#x} at CPL 3 do not have QEMU's HF_* layout")
    return error[0], old[0]


class _SegmentCache(ctypes.Structure):
    """QEMU's SegmentCache (target/i386/cpu.h) on a 64-bit target: what the CPU keeps of a
    loaded selector. ``segment_layout`` checks the layout before anything relies on it."""
    _fields_ = (("selector", ctypes.c_uint32), ("base", ctypes.c_uint64),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32))


# QEMU's order of env->segs[] (R_ES .. R_GS) and the descriptor-table caches that follow them.
_SEGMENT_INDEX = {ES: 0, CS: 1, SS: 2, DS: 3, FS: 4, GS: 5}


@dataclass(frozen=True)
class SegmentLayout:
    """Offsets in env of the segment caches (segs[6], then ldt, tr, gdt, idt, 24 bytes each),
    and of EIP (what ``uc_reg_read(EIP)`` returns: env->eip)."""
    segs: int
    ldt: int
    tr: int
    gdt: int
    idt: int
    eip: int
    cr4: int          # env->cr[4] (its low half), for the block hook's SSE alignment stops


@lru_cache(maxsize=None)
def segment_layout() -> SegmentLayout:
    """Find env->segs[], ldt, tr, gdt and idt by experiment on a scratch CPU.

    In real mode a segment write is a plain load (base = selector * 16), and the table
    registers are written as given: distinct values in each locate every cache and check
    the 24-byte SegmentCache layout. Reading a cache then costs ~0.1 µs, where a
    ``uc_reg_read`` through ctypes costs ~0.6 µs and gives no flags for DS..GS.
    """
    uc = _scratch_cpu()
    context_env = private_layout().context_env
    values = {GDTR: (0, 0x11223000, 0x7F7, 0), IDTR: (0, 0x44556000, 0x3F7, 0),
              LDTR: (0x18, 0x778800, 0xABC, 0x8200), TR: (0x28, 0x99AA00, 0x67, 0x8900)}
    uc.reg_write(CR0, 0x10)                  # real mode: a segment write is a plain load
    for reg, value in values.items():
        uc.reg_write(reg, value)
    for reg, selector in ((ES, 0x2345), (DS, 0x1234), (FS, 0x3456), (GS, 0x4567)):
        uc.reg_write(reg, selector)
    state = _context_bytes(uc.context_save())[context_env:]

    def cache_at(base: int) -> int:
        found = [o - 8 for o in range(8, len(state) - 16, 8) if struct.unpack_from("<Q", state, o)[0] == base]
        if len(found) != 1:
            raise CpuError(f"cannot locate the segment cache with base {base:#x} (candidates {found})")
        return found[0]

    eips = []
    for value in (0x13572468, 0x24681357):
        uc.reg_write(EIP, value)
        found = _context_bytes(uc.context_save())[context_env:]
        eips.append({o for o in range(0, 0x400, 4) if struct.unpack_from("<I", found, o)[0] == value})
    eip = eips[0] & eips[1]
    if len(eip) != 1:
        raise CpuError(f"cannot locate EIP in the CPU state (candidates {sorted(eip)})")
    cr4s = []
    for value in (0x200, 0x600, 0x10):      # OSFXSR; OSFXSR|OSXMMEXCPT; PSE
        uc.reg_write(CR4, value)
        found = _context_bytes(uc.context_save())[context_env:]
        cr4s.append({o for o in range(0, len(found) - 4, 4) if struct.unpack_from("<I", found, o)[0] == value})
    cr4 = cr4s[0] & cr4s[1] & cr4s[2]
    if len(cr4) != 1:
        raise CpuError(f"cannot locate CR4 in the CPU state (candidates {sorted(cr4)})")
    # QEMU keeps CR0..CR4 as target_ulong cr[5]: CR0 and CR3 at 32 and 8 bytes before CR4.
    uc.reg_write(CR3, 0x12345000)
    uc.reg_write(CR0, 0x31)
    found = _context_bytes(uc.context_save())[context_env:]
    at = next(iter(cr4))
    if struct.unpack_from("<II", found, at - 32)[0] != 0x31 or struct.unpack_from("<I", found, at - 8)[0] != 0x12345000:
        raise CpuError("CR0 and CR3 are not where QEMU's cr[] array puts them before CR4")
    layout = SegmentLayout(segs=cache_at(0x23450), ldt=cache_at(0x778800), tr=cache_at(0x99AA00),
                           gdt=cache_at(0x11223000), idt=cache_at(0x44556000), eip=eip.pop(), cr4=cr4.pop())
    cache = _SegmentCache.from_buffer_copy
    checks = [(layout.segs + 24 * _SEGMENT_INDEX[reg], selector, selector << 4)
              for reg, selector in ((ES, 0x2345), (DS, 0x1234), (FS, 0x3456), (GS, 0x4567))]
    checks += [(getattr(layout, name), values[reg][0], values[reg][1])
               for name, reg in (("ldt", LDTR), ("tr", TR), ("gdt", GDTR), ("idt", IDTR))]
    for offset, selector, base in checks:
        got = cache(state[offset:offset + ctypes.sizeof(_SegmentCache)])
        if (got.selector & 0xFFFF, got.base) != (selector, base):
            raise CpuError(f"the segment cache at {offset:#x} does not have QEMU's SegmentCache layout")
    if (layout.ldt, layout.tr, layout.gdt, layout.idt) != tuple(layout.segs + 24 * i for i in range(6, 10)):
        raise CpuError(f"the segment caches are not in QEMU's order: {layout}")
    if (values[GDTR][2], values[IDTR][2]) != (cache(state[layout.gdt:layout.gdt + 24]).limit,
                                              cache(state[layout.idt:layout.idt + 24]).limit):
        raise CpuError("the descriptor-table caches do not hold their limits where QEMU does")
    return layout


# The start of check_exit_request_x86_64 (tcg-op.c) in the wheel's library:
#   mov rsi, [rdi + A]       ; tcg_ctx->uc
#   cmp byte [rsi + B], 0    ; uc->no_exit_request
_EXIT_REQUEST_CODE = re.compile(rb"\x48\x8b\xb7(.{4})\x80\xbe(.{4})\x00", re.DOTALL)


@lru_cache(maxsize=None)
def exit_request_flag() -> int | None:
    """Offset in uc_struct of Unicorn's ``no_exit_request`` (a bool), or None if not found.

    Unicorn 2.1.4 compiles a call to ``helper_check_exit_request`` after every guest load
    and store (tcg-op.c, ``check_exit_request``), so that a hook's ``emu_stop`` takes effect
    at the next memory access rather than at the next block start. QEMU has nothing of the
    kind, and it costs about a fifth of Unicorn's time on ordinary code. Translation skips
    the call while ``uc->no_exit_request`` is set, which only Unicorn's ARM translator does.
    hvsim never relies on it: with block counting, every stop is taken by the block hook
    at a block start (``Cpu.stop``).

    The offset is read from the library's own ``check_exit_request_x86_64``, whose first
    two instructions load ``tcg_ctx->uc`` and test the flag, and then confirmed by
    experiment on a scratch CPU: with the byte set, a stop asked by a port-I/O hook lets
    the rest of its block run; with it clear, the stop lands at the store after the I/O.
    """
    try:
        code = ctypes.string_at(ctypes.cast(ctypes.CDLL(uclib._name).check_exit_request_x86_64,
                                            ctypes.c_void_p).value, 16)
    except (AttributeError, OSError, ValueError):
        return None
    match = _EXIT_REQUEST_CODE.match(code)
    if match is None:
        return None
    offset = struct.unpack("<i", match.group(2))[0]
    if not 0 < offset < 0x10000:
        return None
    try:
        return offset if (_stop_probe(None), _stop_probe(offset)) == ((0, 0x1002), (2, 0x100A)) else None
    except (UcError, CpuError):
        return None


def _stop_probe(flag: int | None) -> tuple[int, int]:
    """(EBX, EIP) after ``out 0x80, al; mov [0x3000], eax; inc ebx; inc ebx; hlt`` with the
    ``out`` hook asking for a stop, the byte at ``flag`` set (None: left alone)."""
    from unicorn import UC_HOOK_INSN
    uc = _scratch_cpu()
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, b"\xe6\x80" + b"\xa3\x00\x30\x00\x00" + b"\x43\x43" + b"\xf4")
    if flag is not None:
        byte = _peek(uc._uch.value + flag, 1)
        if byte != b"\x00":
            raise CpuError("the exit-request flag is not clear on a fresh CPU")
        ctypes.c_uint8.from_address(uc._uch.value + flag).value = 1
    uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, _: uc.emu_stop(), None, 1, 0, X.UC_X86_INS_OUT)
    uc.emu_start(0x1000, 0x2000)
    return uc.reg_read(X.UC_X86_REG_EBX), uc.reg_read(X.UC_X86_REG_EIP)


class Cpu:
    """One x86 CPU: a Unicorn instance plus fast register access and the tricks above."""

    def __init__(self, tcg_buffer_mib: int = 128, counting: str | None = None):
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        # One CPU model under every technique: QEMU's qemu32, the referee's default for
        # qemu-system-i386 (Unicorn's own default advertises MOVBE and leaf 0xd, which the
        # referee's guests would see). Set before the CPU exists, i.e. before anything else.
        self.uc.ctl_set_cpu_model(X.UC_CPU_X86_QEMU32)
        self.uc.ctl_set_tcg_buffer_size(tcg_buffer_mib << 20)
        self._handle = self.uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        layout = private_layout()
        self._counter = ctypes.c_uint64.from_address(self._handle.value + layout.counter)
        # uc_struct's emu_count, the budget of emu_start(count=), follows emu_counter (uc_priv.h);
        # tests/machine/test_cpu_state.py checks it holds the count a run was given.
        self._emu_count = ctypes.c_uint64.from_address(self._handle.value + layout.counter + 8)
        self.in_memory_access = False       # inside an MMIO callback (Monitor.mmio_read/mmio_write)
        env = _env_at(self.uc, layout.cpu_pointer, layout.cpu_env)
        if env is None:
            raise CpuError("this CPU's state is not where the probe found it")
        self._stopped_at: int | None = None
        # EIP as a hook found it where Unicorn left EIP at the block's start (an MMIO access,
        # Monitor._mmio_instruction): ``executed`` counts up to this instruction meanwhile.
        self.eip_hint: int | None = None
        self._reads: dict[tuple[int, ...], _Batch] = {}
        self._writes: dict[tuple[int, ...], _Batch] = {}
        self._hflags = ctypes.c_uint32.from_address(env + layout.hflags)
        self._hflags2 = ctypes.c_uint32.from_address(env + layout.hflags + 4)
        self.eflags_address = env + layout.eflags       # where IF lives, for the native block hook
        self.hflags_address = env + layout.hflags       # where the CPL lives, for its I/O guard
        self._error_code = ctypes.c_int32.from_address(env + layout.error_code)
        self._old_exception = ctypes.c_int32.from_address(env + layout.old_exception)
        self._env = env
        segments = segment_layout()
        self._eip = ctypes.c_uint32.from_address(env + segments.eip)
        self._esp = ctypes.c_uint32.from_address(env + 8 * _GPRS.index(ESP))
        self._caches = {reg: _SegmentCache.from_address(env + segments.segs + 24 * i)
                        for reg, i in _SEGMENT_INDEX.items()}
        for reg, name in ((LDTR, "ldt"), (TR, "tr"), (GDTR, "gdt"), (IDTR, "idt")):
            self._caches[reg] = _SegmentCache.from_address(env + getattr(segments, name))
        self._start_counting(counting)

    # -- registers -----------------------------------------------------------------
    def read(self, reg: int) -> int:
        self._value.value = 0
        if _reg_read(self._handle, reg, self._ref):
            raise CpuError(f"reg_read({reg}) failed")
        return self._value.value

    def write(self, reg: int, value: int) -> None:
        self._value.value = value & 0xFFFFFFFFFFFFFFFF
        err = _reg_write(self._handle, reg, self._ref)
        if err:
            raise CpuError(f"reg_write({reg}, {value:#x}) failed (error {err})")

    @property
    def eip(self) -> int:
        """EIP, read in place (what uc_reg_read gives: env->eip; ~0.05 µs instead of ~0.4)."""
        return self._eip.value

    @property
    def esp(self) -> int:
        """ESP, read in place (env->regs[R_ESP], low half)."""
        return self._esp.value

    def read_named(self, name: str) -> int:
        """A general register by its capstone name; 16-bit names give the low word."""
        if name in WIDE_NAME:
            return self.read(GPR_BY_NAME[WIDE_NAME[name]]) & 0xFFFF
        return self.read(GPR_BY_NAME[name])

    def try_write(self, reg: int, value: int) -> bool:
        """Write a register, returning False where the CPU refuses (e.g. a bad segment)."""
        self._value.value = value & 0xFFFFFFFFFFFFFFFF
        return _reg_write(self._handle, reg, self._ref) == 0

    def table_register(self, reg: int) -> tuple[int, int]:
        """(base, limit) of GDTR or IDTR, read from the CPU's state directly."""
        cache = self._caches[reg]
        return cache.base, cache.limit

    def set_table_register(self, reg: int, base: int, limit: int) -> None:
        """Load GDTR or IDTR. Unicorn's own write only stores the base (cut to 32 bits in
        32-bit mode) and the limit (qemu/target/i386/unicorn.c), so the cache is written
        directly, which also lets a monitor put its own tables above 4 GiB, where QEMU's
        descriptor reads go (they use the full base) and no 32-bit guest address reaches."""
        cache = self._caches[reg]
        cache.base, cache.limit = base, limit & 0xFFFF

    def segment_register(self, reg: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of LDTR or TR (or any segment register: its cache,
        as QEMU keeps it; flags are the descriptor's high dword masked with 0x00F0FF00)."""
        cache = self._caches[reg]
        return cache.selector & 0xFFFF, cache.base, cache.limit, cache.flags

    def set_segment_register(self, reg: int, selector: int, base: int, limit: int, flags: int) -> None:
        """Load LDTR or TR as given (Unicorn's own write is these four stores, with the base cut
        to 32 bits: written directly for the same reason as ``set_table_register``)."""
        if reg not in (LDTR, TR):
            raise CpuError("set_segment_register loads LDTR or TR only")
        cache = self._caches[reg]
        cache.selector, cache.base, cache.limit, cache.flags = selector & 0xFFFF, base, limit, flags

    @property
    def nmi_blocked(self) -> bool:
        """An NMI was delivered and no iret has run since: the next NMI waits (SDM 6.7.1).
        The CPU's own iret clears it; a monitor that emulates iret clears it itself."""
        return bool(self._hflags2.value & HF2_NMI_MASK)

    @nmi_blocked.setter
    def nmi_blocked(self, blocked: bool) -> None:
        self._hflags2.value = self._hflags2.value | HF2_NMI_MASK if blocked else self._hflags2.value & ~HF2_NMI_MASK

    def watch_nmi_window(self, on: bool = True) -> bool:
        """While ``on``, stop the CPU at the first block start after the guest's own iret has
        unblocked NMIs (QEMU's iret ends its block), so that a waiting NMI is delivered right
        after that iret, where the hardware delivers it. False without the C block hook."""
        hook = self.block_hook
        if hook is None:
            return False
        hook.record.nmi_armed = int(on)
        return True

    @property
    def cpl(self) -> int:
        """The CPL as QEMU checks privilege: hflags' copy of SS.DPL (0 in real mode)."""
        return self._hflags.value & HF_CPL_MASK

    # -- the instruction counter ------------------------------------------------------
    # Two ways to count, chosen once per CPU (code translated for one cannot run under the
    # other without a flush, see UNICORN.md "Time"):
    #   "block": the default. The native block hook (native/blockhook.py) adds each
    #            translated block's instruction count as the block starts, and stops the CPU
    #            at the first block boundary at or after the budget (exactly at it for an
    #            ``exact`` run). No per-instruction cost.
    #   "count": ``emu_start(count=N)``, exact to the instruction, ~2x slower; the fallback
    #            when the C hook is missing, and what HVSIM_COUNTING=count forces.
    def _start_counting(self, counting: str | None) -> None:
        from .native import blockhook        # machine/native is part of the machine
        counting = counting or os.environ.get("HVSIM_COUNTING") or "block"
        if counting not in ("block", "count"):
            raise CpuError(f"unknown counting mode {counting!r} (block or count)")
        callback = blockhook.load_native()
        if counting == "block" and callback is None:
            blockhook.warn_once(blockhook.why_not() or "not loaded")
            counting = "count"
        self.counting = counting
        self._exit_requests(counting == "count")
        self.block_hook = blockhook.BlockHook(self, callback, counting == "block") if callback else None
        self._record = self.block_hook.record if counting == "block" else None
        if self._record is not None:
            # QEMU 7.2's #GP for a misaligned 16-byte SSE operand (``_run_to_aligned``)
            self._record.cr4_at = self._env + segment_layout().cr4
        self._running = False
        self._cuts: list[tuple[int, int, int, int, int]] = []
        self._stop_eip: int | None = None   # EIP when a hook asked the running slice to stop
        self._stop_count = 0                # and the count there
        self._failed = False                # the last run ended with a UcError
        self._partials: dict[tuple[int, int, int, int], int] = {}
        self._blocks: dict[bytes, tuple] = {}   # code -> _decode_block's answer
        self._disasm = None
        self.refused_io: tuple[int, int] | None = None   # (EIP, length) of port I/O the guard refused
        self.misaligned: int | None = None   # EIP of an SSE instruction whose operand must be aligned and is not
        self.watched: tuple[int, int] | None = None   # (EIP, length) of a watched instruction for the monitor
        self._watched: frozenset[str] = frozenset()
        self._watched_nt: frozenset[str] = frozenset()
        self._narrowed: dict = {}
        self._decide_watched = None
        self._fault_mark: tuple[int, int] | None = None  # (counter, block) when a fault hook last ran
        # How the counter reads guest code by linear address; the monitor that runs the CPU
        # sets its own (paging); by default linear is physical.
        self.code_reader = self.uc.mem_read
        self.count_override = None          # see override_counts

    def _exit_requests(self, on: bool) -> None:
        """Have Unicorn compile its exit check after every guest memory access (``on``), or
        not (see ``exit_request_flag``). ``count=`` needs it: its stop after the N-th
        instruction is that check. Block counting does not: the block hook takes every stop.
        Read at translation: set before code is translated, or flush."""
        flag = exit_request_flag()
        if flag is not None:
            ctypes.c_uint8.from_address(self._handle.value + flag).value = 0 if on else 1

    def count_every_instruction(self) -> None:
        """Count with ``count=`` from now on: for a monitor whose hooks need EIP exact on every
        instruction (with block counting, a hook called from inside a QEMU helper, such as
        the CPU's own descriptor read for a segment load, sees EIP at the block's start).
        Only before the CPU has run any code (code translated for one mode must not run
        under the other)."""
        if self._record is not None:
            self._record.counting = 0
            self._record.fast = 0
            self._record.io_guard = 0
            self._record.cr4_at = None
            self._record = None
            self.counting = "count"
            self._exit_requests(True)
            self.uc.ctl_flush_tb()

    def refuse_port_io_above_iopl(self, on: bool = True) -> None:
        """Have block counting stop *before* port I/O that runs with CPL > IOPL (a #GP on a
        real CPU; Unicorn runs it), with every instruction before it in its block done:
        ``run`` then ends with ``refused_io`` set and EIP on the instruction, which has
        not run but is counted, as ``count=`` counts a faulting instruction.

        An I/O hook cannot do this: Unicorn finishes the block after it whatever the hook
        asks. Needs block counting and QEMU's CPL; otherwise nothing changes (the monitor's
        I/O hooks refuse the access as before)."""
        r = self._record
        if r is not None and r.eflags_at and r.hflags_at:
            r.io_guard = int(on)

    def refuse_port_io_from_cpl(self, cpl: int | None) -> None:
        """As ``refuse_port_io_above_iopl``, for a technique that keeps the IOPL virtual: stop
        before port I/O that runs at (real) CPL ``cpl`` or above; None: never. The technique
        must say so again whenever its rule changes (the guest's virtual IOPL)."""
        r = self._record
        if r is not None and r.eflags_at and r.hflags_at:
            r.io_guard, r.io_guard_cpl = (0, 0) if cpl is None else (2, cpl)

    def run(self, eip: int, until: int, count: int, exact: bool = False) -> None:
        """Run from ``eip`` for ``count`` instructions (see ``executed`` for what ran).

        Block counting stops at the first block boundary at or after ``count``, so a run may
        retire a few instructions more than ``count`` (less than one block); with ``exact``
        it stops at ``count`` itself (a block that would cross it runs only its first
        instructions, ``_run_prefix``). ``count=`` always stops exactly at ``count``.
        """
        self._stopped_at = None
        self.refused_io = None
        self.misaligned = None
        self.watched = None
        r = self._record
        if r is None:
            self.uc.emu_start(eip, until, count=count)
            return
        r.counter, r.deadline, r.stopped, r.exact = 0, count, 0, int(exact)
        r.block_address, r.block_size, r.block_icount = 0, 0, 0
        self._cuts.clear()
        self._stop_eip = None
        self._fault_mark = None
        self._failed = False
        self._running = True
        try:
            while True:
                try:
                    self.uc.emu_start(eip, until)
                except UcError:
                    self._failed = True     # EIP on the instruction that could not run
                    raise
                why = r.stopped
                if why == _STOP_UNKNOWN:    # learn the block, then run it
                    self._learn(r.unknown_address, r.unknown_size)
                elif why == _STOP_CROSSING:  # run the block's first instructions up to the deadline
                    self._run_prefix(r.unknown_address, r.unknown_size, r.deadline - r.counter, until)
                    break
                elif why == _STOP_IO:       # run up to the I/O instruction, which is refused
                    if not self._run_to_io(r.unknown_address, r.unknown_size, until):
                        break
                elif why == _STOP_ALIGN:    # run up to the SSE instruction, and check its operand
                    if not self._run_to_aligned(r.unknown_address, r.unknown_size, until):
                        break
                elif why == _STOP_WATCH:    # run up to the watched instruction, and ask the monitor
                    if not self._run_to_watched(r.unknown_address, r.unknown_size, until):
                        break
                else:
                    break
                r.stopped = 0
                eip = self.read(EIP)
        finally:
            self._running = False

    def override_counts(self, count, from_address: int) -> None:
        """Count the code at or above ``from_address`` with ``count(address, size)`` (instructions
        to count for those bytes, or None to count them as decoded) rather than as the CPU
        decodes it: binary translation's cache counts the guest instructions a block performs."""
        self.count_override = count
        if self._record is not None:
            self._record.learn_from = from_address
            self.block_hook.forget()

    def _learn(self, address: int, size: int) -> None:
        """Count a block's instructions (and find its port I/O) for the block hook's cache."""
        icount, flags = self._decode_block(address, size)[:2]
        self.block_hook.learn(address, size, icount, flags)

    def _decode_block(self, address: int, size: int) -> tuple[int, int, int, int, int, bool]:
        """(instructions, cache flags, offset of the first in/out/ins/outs, of the first SSE
        instruction that needs its 16-byte operand aligned, of the first watched instruction,
        each -1 where there is none; whether QEMU ends its block after that watched one) of the
        ``size`` bytes at linear ``address`` (bytes that do not decode: one instruction, the one
        that faults)."""
        from .native.blockhook import (ALIGN_KNOWN, HAS_ALIGNED, HAS_IO, HAS_WATCHED, HAS_WATCHED_NT, IO_KNOWN,
                                       WATCH_KNOWN)
        try:
            code = bytes(self.code_reader(address, size))
        except Exception:                   # unreadable: the block is one faulting instruction
            return 1, IO_KNOWN | ALIGN_KNOWN | WATCH_KNOWN, -1, -1, -1, True
        known = self._blocks.get(code)
        if known is None:
            n = end = 0
            first_io = first_aligned = first_watched = -1
            watched, when_nt, narrowed = self._watched, self._watched_nt, self._narrowed
            nested = last = False
            for offset, length, mnemonic, op_str in self._disassembler().disasm_lite(code, 0):
                name = mnemonic.split()[-1]
                if first_io < 0 and name in _IO_MNEMONICS:
                    first_io = offset
                if first_aligned < 0 and "xmmword" in op_str and _needs_alignment(mnemonic):
                    first_aligned = offset
                if first_watched < 0 and watched and _is_watched(watched, narrowed, name, op_str,
                                                                 code[offset:offset + length]):
                    first_watched = offset
                    nested, last = name in when_nt, _ends_block(name, op_str)
                n, end = n + 1, end + length
            n += 1 if end < size else 0
            flags = IO_KNOWN | ALIGN_KNOWN | WATCH_KNOWN | (HAS_IO if first_io >= 0 else 0)
            flags |= HAS_ALIGNED if first_aligned >= 0 else 0
            if first_watched >= 0:
                flags |= HAS_WATCHED_NT if nested else HAS_WATCHED
            known = self._blocks[code] = (n, flags, first_io, first_aligned, first_watched, last)
        if self.count_override is not None:
            # Code that stands for other code (binary translation's cache): how many guest
            # instructions these bytes are, which the bytes alone cannot say.
            n = self.count_override(address, size)
            if n is not None:
                return (n,) + known[1:]
        return known

    def _run_up_to(self, start: int, size: int, until: int, kind: int) -> int | bool:
        """Run the block at ``start`` up to its first instruction of a ``kind`` the hook stops
        for (an index into ``_decode_block``'s offsets: 2 port I/O, 3 an aligned SSE operand,
        4 a watched instruction): its address, the CPU stopped before it; True where the code
        changed since the hook learned it (learned again: go on running); False where the run
        ended first (the deadline, or a hook acted)."""
        r = self._record
        first = self._decode_block(start, size)[kind]
        if first < 0:
            self._learn(start, size)
            r.stopped = 0
            return True
        before = self._count_instructions(start, first)
        if r.exact and r.counter + before >= r.deadline:
            self._run_prefix(start, size, r.deadline - r.counter, until)
            return False
        if before and not self._run_prefix(start, size, before, until):
            return False
        return (start + first) & 0xFFFFFFFF

    def _held_before(self, at: int) -> tuple[int, int]:
        """The CPU stays before the instruction at ``at``, which counts as run (the monitor
        refuses or performs it, as count= counts a faulting instruction): (EIP, its length)."""
        r = self._record
        r.counter += 1
        r.block_address, r.block_size, r.block_icount = 0, 0, 0
        insn = next(self._disassembler().disasm_lite(bytes(self.code_reader(at, 16)), at), None)
        return (at - self._caches[CS].base) & 0xFFFFFFFF, insn[1] if insn else 1     # (EIP, not linear)

    def _run_to_io(self, start: int, size: int, until: int) -> bool:
        """The block at ``start`` holds port I/O and runs with CPL > IOPL: run it up to the
        first I/O instruction, and refuse that one. False when the run ended there (or at
        the deadline, or elsewhere because a hook acted); True to go on running."""
        at = self._run_up_to(start, size, until, 2)
        if isinstance(at, bool):
            return at
        self.refused_io = self._held_before(at)
        return False

    def _run_to_aligned(self, start: int, size: int, until: int) -> bool:
        """The block at ``start`` holds a legacy SSE instruction whose 16-byte memory operand
        must be aligned, and CR4.OSFXSR is set: run the block up to it and look at the
        operand's linear address. Misaligned: the instruction is refused (``misaligned``;
        the monitor raises #GP(0), as QEMU 7.2 does and the QEMU 5.0 in Unicorn does not)
        and the run ends. Aligned: it runs alone, with the block hook told to let its
        block start through once, and True says go on running. False also when the run
        ended before it (the deadline, or a hook acted)."""
        at = self._run_up_to(start, size, until, 3)
        if isinstance(at, bool):
            return at
        address = self._operand_address(at)
        if address is not None and address & 15:
            self.misaligned = self._held_before(at)[0]
            return False
        return self._run_one(at, (start + size - at) & 0xFFFFFFFF, until)

    def _run_one(self, at: int, size: int, until: int) -> bool:
        """Run the one instruction at ``at`` (the CPU stopped before it), the block hook told to
        let that block start through once: True when the CPU ended right after it."""
        r = self._record
        r.pass_at = at
        try:
            return self._run_prefix(at, size, 1, until)
        finally:
            r.pass_at = _NO_PASS

    def watch_instructions(self, mnemonics: frozenset[str], decide, when_nt: frozenset[str] = frozenset(),
                           narrowed: dict[str, Callable[[bytes], bool]] | None = None) -> None:
        """Stop before every instruction with one of these mnemonics (capstone's, last word:
        ``invlpg``, ``ljmp``, ``iretd``; ``jmp far``/``call far`` for the far forms through
        memory), with every instruction before it in its block done,
        and ask ``decide(eip)``: True, the run ends there with ``watched`` = (EIP, length), the
        instruction counted as run (the monitor performs it, as VT-x exits on it); False, it
        runs on the CPU, and the run goes on. Those also in ``when_nt`` (an iret) stop the CPU only
        while EFLAGS.NT is set (the block hook looks). A mnemonic with a test in ``narrowed`` is
        watched only where the test passes on the instruction's bytes (``mov``: only to or from a
        control register): the test runs once per block, when the block is first seen, so a
        block without a watched instruction still costs one mask test. Needs block counting;
        with ``count=`` nothing is watched."""
        r = self._record
        if r is None:
            return
        self._watched, self._decide_watched = frozenset(mnemonics), decide
        self._watched_nt = frozenset(when_nt)
        self._narrowed = dict(narrowed or {})
        from .native.blockhook import HAS_WATCHED, HAS_WATCHED_NT, WATCH_KNOWN
        self._blocks.clear()
        self.block_hook.forget()
        r.watch = int(bool(mnemonics))
        # Blocks with a watched instruction leave the hook's fast path (one mask test per block).
        r.fast_mask, r.fast_value = ((WATCH_KNOWN | HAS_WATCHED | HAS_WATCHED_NT, WATCH_KNOWN) if mnemonics
                                     else (0, 0))

    def _run_to_watched(self, start: int, size: int, until: int) -> bool:
        """The block at ``start`` holds a watched instruction (``watch_instructions``): run up to
        it and ask. False when the run ended (there, at the deadline, or a hook acted)."""
        at = self._run_up_to(start, size, until, 4)
        if isinstance(at, bool):
            return at
        if self._decide_watched(at):
            self.watched = self._held_before(at)
            return False
        if not self._decode_block(start, size)[5]:
            # QEMU's block goes on after it (rdmsr, wrmsr, mov from a CR), and may hold another
            # watched instruction: run this one alone, then go on watching. Where it faulted
            # (a #GP at CPL 3), the CPU stopped inside the handler the fault was delivered to,
            # or at the address after it: go on from there too, unless a hook ended the run.
            return self._run_one(at, (start + size - at) & 0xFFFFFFFF, until) or self._stop_eip is None
        # Run on from it, the block hook told to let its block start through once (not as a
        # one-instruction prefix: a far jmp or an iret goes elsewhere, never to the next one).
        # The whole block passes unwatched, which is safe because QEMU ends its translated
        # block right after this instruction (``_ends_block``): it is the block's last.
        r = self._record
        r.pass_at = at
        r.stopped = 0
        return True

    def _operand_address(self, eip: int) -> int | None:
        """The linear address of the memory operand of the instruction at ``eip`` (None where
        it cannot be read or has none): offset from the registers, plus the segment's base."""
        from ..vmm.decode import MAX_INSN, Mem, decode
        try:
            insn = decode(bytes(self.code_reader(eip, MAX_INSN)), eip)
        except Exception:                   # near the end of readable memory: let the CPU fault
            return None
        mem = next((op for op in insn.operands if isinstance(op, Mem)), None) if insn else None
        if mem is None:
            return None
        base = self.segment_register(SEG_BY_NAME[mem.segment or mem.default_segment])[1]
        return (mem.offset(self.read_named) + base) & 0xFFFFFFFF

    def _run_prefix(self, start: int, size: int, n: int, until: int) -> bool:
        """Run only the first ``n`` instructions of the block at ``start`` (the CPU is stopped
        before it), counting them: True when the CPU ended after exactly those.

        Unicorn stops at ``emu_start``'s end address only where it *translates* it, as a
        hlt in place of that instruction: so the block is dropped, run with the end
        address after ``n`` instructions (translated again, shorter), and the short block
        dropped again so that no later run meets its hlt. A run that went elsewhere (a
        fault's handler may have translated other code with that hlt) drops every block.
        """
        r = self._record
        if n <= 0:
            return True
        end = start + self._prefix_length(start, size, n)
        before, cuts = r.counter, len(self._cuts)
        self.uc.ctl_remove_cache(start, start + 1)
        self.block_hook.dropped_own_blocks()
        self.block_hook.learn(start, end - start, n, self._decode_block(start, end - start)[1])
        r.stopped = 0
        try:
            self.uc.emu_start((start - self._caches[CS].base) & 0xFFFFFFFF, end)   # begin is an EIP
        except UcError:
            self._failed = True
            self.uc.ctl_flush_tb()
            raise
        clean = (self.read(EIP) + self._caches[CS].base == end and r.counter == before + n and not r.stopped
                 and len(self._cuts) == cuts and self._stop_eip is None)
        if clean:
            self.uc.ctl_remove_cache(start, start + 1)
            self.block_hook.dropped_own_blocks()
        else:
            self.uc.ctl_flush_tb()
        return clean

    def _prefix_length(self, start: int, size: int, n: int) -> int:
        """Bytes of the first ``n`` instructions of the block at ``start``."""
        try:
            code = bytes(self.code_reader(start, size))
        except Exception as e:              # GuestFault, BusError: what the monitor's reader raises
            raise UnreadableCode(f"the block at {start:#010x} is running but its code cannot be read "
                                 f"through the guest's page tables ({e}); hvsim cannot stop inside it") from None
        end = 0
        for i, (_, length, _, _) in enumerate(self._disassembler().disasm_lite(code, start)):
            if i == n:
                break
            end += length
        return end

    def set_deadline(self, count: int) -> bool:
        """Move the running slice's end to ``count`` instructions from its start (taken at the
        first block boundary at or after it); False where only a stop can end it (``count=``)."""
        r = self._record
        if r is None:
            return False
        r.deadline = count
        return True

    def stop(self) -> None:
        """End the running slice, from a hook.

        With ``count=``, Unicorn notices ``emu_stop`` at the next instruction's exit check,
        which comes after that instruction has already bumped the counter: the count at the
        request is remembered, or every stop from a port-I/O hook would count one
        instruction that never ran.

        With blocks, Unicorn would notice ``emu_stop`` at the next block start (and, were
        ``exit_request_flag`` not set, after the next guest memory access): an I/O hook
        cannot end its block. So the stop is asked of the block hook instead: the slice ends at the
        next block start, before that block runs, the instruction boundary where QEMU
        itself takes an interrupt; where that is depends only on the code. The count at
        the request is remembered too, for a run that ends there (``executed_at_stop``).
        """
        r = self._record
        if r is None:
            if self._stopped_at is None:
                self._stopped_at = self._counter.value
            if self.in_memory_access:
                # emu_stop from a memory access's callback is taken by the exit check Unicorn
                # compiles after the access, which restores EIP to the *same* instruction: it
                # would run again, its device access twice. Lower the budget instead: the next
                # instruction's count check stops the CPU before that one runs.
                self._emu_count.value = self._counter.value
            else:
                self.uc.emu_stop()
            return
        if not self._running:
            self.uc.emu_stop()
            return
        if self._fault_mark == (r.counter, r.block_address):
            # From a fault's hook (no block has started since): the exception has ended the
            # block, and the CPU may not reach another block start (a fault on the fetch
            # repeats for ever), so emu_stop, which Unicorn notices before anything else runs.
            self.uc.emu_stop()
        if self._stop_eip is None:
            self._stop_eip = self.read(EIP)
            self._stop_count = self.executed(0)
        r.deadline = 0

    def executed_at_stop(self, count: int) -> int:
        """Instructions executed up to and including the one whose hook asked for the stop:
        for a run that ends there (isa-debug-exit, a crash), the count ``count=`` gives.
        The CPU ran on to the end of that block (``stop``)."""
        if self._record is None or self._stop_eip is None:
            return self.executed(count)
        return self._stop_count

    def ran_out(self, count: int) -> bool:
        """Did the last run end because it reached its budget (or a deadline moved in by
        ``set_deadline``, or a ``stop``), rather than by the guest (hlt) or a hook's own stop?"""
        r = self._record
        if r is None:
            return self.executed(count) >= count
        return r.stopped == _STOP_DEADLINE or (r.exact and r.counter >= r.deadline)

    def cut_block(self, eip: int | None = None) -> None:
        """From a fault's hook: the running block ends at ``eip`` (default: EIP), the faulting instruction.

        The block hook counted the whole block when it started; the instructions after
        ``eip`` never ran (the CPU goes to a handler, or back to ``eip``). The faulting
        instruction itself counts as one, as ``count=`` counts it (its count is taken
        before it runs). Settled at once.
        """
        r = self._record
        if r is None:
            return
        address = r.block_address
        self._fault_mark = (r.counter, address)    # no block has started since this fault
        r.after_fault = 1                   # the hook may write EIP: see blockhook.c, skip_sync_at
        icount = r.block_icount
        if not icount:
            return
        if eip is None:
            eip = self.read(EIP)
        eip += self._caches[CS].base        # blocks are known by linear address (CS's base + EIP)
        size = r.block_size
        if address <= eip < address + size:
            r.block_icount = 0              # the block is settled: nothing more of it runs
            if eip != address or icount != 1:   # (a one-instruction block cut at its start loses nothing)
                self._cuts.append((address, size, icount, eip, 1))
                # Settled now, not when the count is next read: the block hook compares the
                # counter with the slice's deadline at every block start, and a counter still
                # holding the rest of a cut block let a run end past --max-instructions.
                self._settle_cuts()

    def executed(self, count: int) -> int:
        """Instructions executed by the last ``run(count=count)``, or so far in the running one.

        ``count=``: the counter is bumped before each instruction runs; when the budget
        stops the CPU it has been bumped once more for the instruction that did not run,
        and a stop asked from a hook may have bumped it for the next one (``stop``).

        Blocks: every block entered is counted whole. Inside a hook (EIP on the instruction
        the hook is about) the count is the blocks before the current one, plus its
        instructions from its start to EIP, plus the instruction at EIP. After the run, the
        block hook's stops (deadline, window, a hook's ``stop``) are on a block boundary; a
        run that failed left EIP on the instruction that could not run, which counts; any
        other stop left EIP on the next instruction to run, and the instructions before it
        in its block are counted.
        """
        r = self._record
        if r is None:
            done = min(self._counter.value, count)
            return done if self._stopped_at is None else min(done, self._stopped_at)
        if self._cuts:
            self._settle_cuts()
        if not r.block_icount or (not self._running and r.stopped):
            return r.counter
        eip = self.read(EIP) if self.eip_hint is None else self.eip_hint
        eip += self._caches[CS].base        # blocks are known by linear address (CS's base + EIP)
        start = r.block_address
        if not start <= eip < start + r.block_size:
            return r.counter                # the block ran to its end
        done = self._partial(start, r.block_size, r.block_icount, eip)
        if self._running or self._failed:
            done += 1                       # the instruction the hook (or the error) is about
        return r.counter - r.block_icount + done

    def _settle_cuts(self) -> None:
        r = self._record
        marked = self._fault_mark == (r.counter, r.block_address)
        for start, size, icount, eip, current in self._cuts:
            r.counter -= icount - (self._partial(start, size, icount, eip) + current)
        self._cuts.clear()
        if marked:
            self._fault_mark = (r.counter, r.block_address)

    def _partial(self, start: int, size: int, icount: int, eip: int) -> int:
        """Instructions from a block's ``start`` up to (not including) ``eip``."""
        key = (start, size, icount, eip)
        done = self._partials.get(key)
        if done is None:
            done = min(self._count_instructions(start, eip - start), icount) if eip > start else 0
            self._partials[key] = done
        return done

    def _disassembler(self):
        if self._disasm is None:
            from capstone import CS_ARCH_X86, CS_MODE_32, Cs
            self._disasm = Cs(CS_ARCH_X86, CS_MODE_32)
        return self._disasm

    def _count_instructions(self, address: int, size: int) -> int:
        """How many instructions the ``size`` bytes at linear ``address`` hold (decoded once;
        bytes that do not decode count as one instruction, the one that faults)."""
        if size <= 0:
            return 0
        return self._decode_block(address, size)[0]

    # -- exceptions and the interrupt shadow ------------------------------------------------
    def descriptor_tables_address(self) -> int:
        """Where QEMU keeps the LDTR, TR and GDTR caches, one after the other (24 bytes each)."""
        return self._env + segment_layout().ldt

    def control_register_address(self, n: int) -> int:
        """Where QEMU keeps CR``n`` (0, 3 or 4; the low 32 bits), for C code that reads the
        guest's own control registers (the EPT fill)."""
        if n not in (0, 3, 4):
            raise CpuError(f"CR{n} is not kept where the fill reads")
        return self._env + segment_layout().cr4 - 8 * (4 - n)

    def invalid_address(self) -> int:
        """The exact linear address of the access whose TLB fill was refused last (CR2 of a
        page fault the C fill found): ``invalid_address_offset``."""
        return ctypes.c_uint64.from_address(self._handle.value + invalid_address_offset()).value & 0xFFFFFFFF

    def exception_error_code(self) -> int:
        """The error code of the exception being raised, as the CPU would push it.

        Valid inside a UC_HOOK_INTR hook, and until the next exception: QEMU sets it for
        every exception (0 for those without one, and for ``int n``/``int3``/``into``).
        Unicorn never looks at the IDT, so an error code that only delivery produces
        (a bad gate: vector * 8 + 2) is the monitor's to compute.
        """
        return self._error_code.value & 0xFFFFFFFF

    def interrupt_shadow(self) -> bool:
        """True while the instruction after ``sti``, ``mov ss`` or ``pop ss`` has not run.

        QEMU's rule, which the reference machine follows: every ``sti`` opens a shadow (even
        with IF already set), and so do ``mov ss`` and ``pop ss``; any of the three executed
        inside a shadow ends it instead. An exception in the shadowed instruction leaves
        the shadow set (see clear_interrupt_shadow).
        """
        return bool(self._hflags.value & HF_INHIBIT_IRQ_MASK)

    def clear_interrupt_shadow(self) -> None:
        """End the shadow now: call it when delivering an event, as the hardware does."""
        self._hflags.value &= ~HF_INHIBIT_IRQ_MASK

    def forget_fault(self) -> None:
        """Undo QEMU's memory of the last fault so the next one is not taken as #DF."""
        self._old_exception.value = -1

    # -- privilege ------------------------------------------------------------------------
    def enter_ring0(self, cs: int, ss: int) -> None:
        """Drop the CPU to CPL 0 with ring-0 selectors ``cs``/``ss`` from the current GDT.

        QEMU keeps the CPL in hflags and checks a segment load against it; loading SS then
        sets it to the new SS's DPL. So the CPL is written to 0 and SS and CS loaded, as the
        hardware's own ring transition does, with no CR0 change (toggling CR0.PE would work
        too, but every PE change flushes Unicorn's TLB: twice per exit). On a refused load
        the CPL is put back.
        """
        old = self._hflags.value
        self._hflags.value = old & ~HF_CPL_MASK
        if not self.try_write(SS, ss):
            self._hflags.value = old
            raise CpuError(f"cannot load ring-0 SS {ss:#x}")
        if not self.try_write(CS, cs):
            raise CpuError(f"cannot load ring-0 CS {cs:#x}")

    def load_ring(self, cpl: int, cs: int, ss: int, esp: int, eflags: int, eip: int) -> bool:
        """Enter CS:EIP, SS:ESP and EFLAGS at ring ``cpl``, in one batch, as a far transfer does.

        The CPL is set first (QEMU checks each segment load against it, and the SS load
        then sets it from SS's DPL), so this goes inward or outward alike. It does not
        touch the data segments: an event's delivery leaves them alone; a return to an
        outer ring must then call ``drop_segments_above`` as iret does. False where the CPU
        refuses a selector: the registers before it are loaded, so the caller must load
        a known state (or end the run).
        """
        old = self._hflags.value
        self._hflags.value = (old & ~HF_CPL_MASK) | cpl
        if not self.write_batch(_RING_ENTRY, (ss, cs, esp, eflags, eip)):
            self._hflags.value = old
            return False
        return True

    def drop_segments_above(self, cpl: int) -> None:
        """After a return to ring ``cpl``: null each data segment (and non-conforming code
        segment) in DS, ES, FS, GS that is more privileged than ``cpl``, as iret and retf
        do (QEMU's validate_seg, from the segment caches; a null FS or GS stays as it is)."""
        caches = self._caches
        for reg in _DATA_SEGMENTS:
            flags = caches[reg].flags
            if (flags >> 13) & 3 >= cpl or flags & _DESC_CS and flags & _DESC_C:
                continue                    # usable at the new ring (the common case)
            if reg in (FS, GS) and caches[reg].selector & 0xFFFC == 0:
                continue
            self.write(reg, 0)

    # -- batched access: an exit's registers in one call ------------------------------------
    def read_batch(self, regs: tuple[int, ...]) -> list[int]:
        """The values of ``regs`` (a tuple, reused: its arguments are built once).

        Reads and writes keep separate slots: a read slot only ever holds what Unicorn
        wrote for that register, so a 16-bit register's upper bytes stay zero unasked."""
        batch = self._reads.get(regs)
        if batch is None:
            batch = self._reads[regs] = _Batch(regs)
        if _reg_read_batch(self._handle, batch.ids, batch.pointers, batch.count):
            raise CpuError(f"reg_read_batch({regs}) failed")
        return batch.values[:]

    def write_batch(self, regs: tuple[int, ...], values) -> bool:
        """Write ``regs`` in order (``values`` as many, each below 2**64); False where the CPU
        refused one (a bad segment): the registers before it are written, it and those after
        are not."""
        batch = self._writes.get(regs)
        if batch is None:
            batch = self._writes[regs] = _Batch(regs)
        batch.values[:] = values
        return _reg_write_batch(self._handle, batch.ids, batch.pointers, batch.count) == 0

    def state_addresses(self) -> tuple[int, int, int]:
        """Where QEMU keeps CS's base, SS's base and ESP (each a u64), for C code that must
        read them inside a hook: env begins with the general registers (``_probe_env``)."""
        base = _SegmentCache.base.offset
        return (ctypes.addressof(self._caches[CS]) + base, ctypes.addressof(self._caches[SS]) + base,
                self._env + 8 * _GPRS.index(ESP))

    def running_block(self) -> tuple[int, int] | None:
        """(address, size) of the translated block running now, where instructions are counted
        per block; None where every instruction is counted (EIP is then exact in every hook)."""
        r = getattr(self, "_record", None)
        if r is None or not self._running:
            return None
        return r.block_address, r.block_size

    # -- what the lead's monitor asks (fallbacks until the probes below provide them) ----------
    def software_interrupt_raised(self) -> bool:
        """Was the exception being delivered raised by int n / int3 / into (not a fault)?
        Without a probe of QEMU's exception_is_int, the monitor checks the bytes before EIP."""
        return True

    def interrupt_window_watch(self):
        """A native block hook that stops the CPU when IF goes up, or None without one."""
        try:
            from .native.blockhook import InterruptWindowWatch
        except ImportError:
            return None
        return InterruptWindowWatch(self)
