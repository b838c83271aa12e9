"""The physical CPU: one Unicorn instance, and the few tricks it takes to drive it as a VMM would.

Unicorn is a CPU emulator, not a virtualization extension, so three things a real
monitor gets from the hardware have to be built here, once, for every technique:

* **fast register access.** The Python binding costs 2-4 µs per register; an exit
  reads several. We call ``uc_reg_read``/``uc_reg_write`` through ctypes directly.
* **an exact instruction counter.** ``emu_start(count=N)`` stops after N
  instructions but does not say how many ran when something else stopped it first
  (a ``hlt``, a hook). Unicorn keeps that number in its private ``emu_counter``;
  we find where at start-up, by running a known count and looking for it, never by
  hard-coding an offset.
* **fault recovery.** Unicorn hands every exception to a hook and never runs QEMU's
  ``do_interrupt``, which is what resets ``env->old_exception``. Left alone, a second
  trapped fault is escalated to #DF and a third silently stops the CPU. After each
  trapped fault we reset that field in a saved context; its offset is likewise
  discovered by diffing two contexts.
* **changing CPL from outside.** Writing CS does not change the privilege level; the
  CPL is SS's DPL. ``enter_ring0`` briefly clears CR0.PE so that a real-mode SS load
  drops the CPL to 0, then loads the target ring-0 segments: a monitor "teleports"
  into a ring-0 handler without running any code of its own.
"""
from __future__ import annotations

import ctypes
import struct
from functools import lru_cache

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_HOOK_INTR, Uc
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
EFLAGS_IF = 1 << 9
EFLAGS_IOPL = 3 << 12


# Our own handle on the library, with no argtypes: ctypes then skips argument conversion, which
# makes a register access ~0.25 µs instead of ~0.65 µs through the binding's prototypes.
_lib = ctypes.CDLL(uclib._name)
_reg_read, _reg_write = _lib.uc_reg_read, _lib.uc_reg_write
_reg_read.restype = _reg_write.restype = ctypes.c_int


class CpuError(RuntimeError):
    """Unicorn refused something the monitor asked of it: a VMM bug, not a guest's fault."""


@lru_cache(maxsize=None)
def _private_offsets() -> tuple[int, int]:
    """(emu_counter offset in uc_struct, old_exception offset in a saved context).

    Found by experiment on a scratch CPU, once per process: the library build fixes them.
    """
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks  # only needed for this probe
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(4 << 20)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, bytes(ks.asm("l: inc eax; jmp l", 0x1000)[0]))
    handle = uc._uch.value

    def u64_offsets(values: set[int]) -> set[int]:
        words = (ctypes.c_uint64 * 0x800).from_address(handle)
        return {i * 8 for i in range(0x800) if words[i] in values}

    uc.emu_start(0x1000, 0, count=12345)
    first = u64_offsets({12346})
    uc.emu_start(0x1000, 0, count=54321)
    counter = [o for o in first if ctypes.c_uint64.from_address(handle + o).value == 54322]
    if len(counter) != 1:
        raise CpuError(f"cannot locate Unicorn's instruction counter (candidates {counter})")

    # old_exception: -1 before any fault, 13 after a trapped #GP (cli at CPL 3 via iretd).
    gdt = (b"\0" * 8 + struct.pack("<Q", 0x00CF9A000000FFFF) + struct.pack("<Q", 0x00CF92000000FFFF)
           + struct.pack("<Q", 0x00CFFA000000FFFF) + struct.pack("<Q", 0x00CFF2000000FFFF))
    uc.mem_write(0x500, gdt)
    uc.reg_write(GDTR, (0, 0x500, len(gdt) - 1, 0))
    uc.reg_write(CR0, 0x11)
    uc.reg_write(CS, 0x08)
    uc.reg_write(SS, 0x10)
    uc.mem_write(0x2000, b"\xcf")            # iretd
    uc.mem_write(0x3000, b"\xfa\xf4")        # cli; hlt
    uc.mem_write(0x9000, struct.pack("<5I", 0x3000, 0x1B, 2, 0x8000, 0x23))
    uc.reg_write(ESP, 0x9000)
    before = uc.context_save()
    seen = []

    def on_fault(uc, intno, _):
        seen.append(uc.context_save())
        uc.emu_stop()

    uc.hook_add(UC_HOOK_INTR, on_fault)
    uc.emu_start(0x2000, 0, count=10)
    if not seen:
        raise CpuError("the old_exception probe did not fault")
    a = ctypes.string_at(before.context.value, before.size)
    b = ctypes.string_at(seen[0].context.value, seen[0].size)
    old = [o for o in range(0, len(a) - 3, 4)
           if struct.unpack_from("<i", a, o)[0] == -1 and struct.unpack_from("<i", b, o)[0] == 13]
    if len(old) != 1:
        raise CpuError(f"cannot locate old_exception in a saved context (candidates {old})")
    return counter[0], old[0]


class Cpu:
    """One x86 CPU: a Unicorn instance plus fast register access and the tricks above."""

    def __init__(self, tcg_buffer_mib: int = 128):
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_set_tcg_buffer_size(tcg_buffer_mib << 20)
        self._handle = self.uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        counter_offset, self._old_exception_offset = _private_offsets()
        self._counter = ctypes.c_uint64.from_address(self._handle.value + counter_offset)
        self._fault_ctx = None

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
        """(base, limit) of GDTR or IDTR."""
        _, base, limit, _ = self.uc.reg_read(reg)
        return base, limit

    def set_table_register(self, reg: int, base: int, limit: int) -> None:
        self.uc.reg_write(reg, (0, base, limit, 0))

    def segment_register(self, reg: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of LDTR or TR."""
        return tuple(self.uc.reg_read(reg))

    def set_segment_register(self, reg: int, selector: int, base: int, limit: int, flags: int) -> None:
        self.uc.reg_write(reg, (selector, base, limit, flags))

    @property
    def cpl(self) -> int:
        # QEMU keeps CPL = SS.DPL; CS.RPL equals it outside transitions.
        return self.read(CS) & 3

    # -- the instruction counter ------------------------------------------------------
    def executed(self, count: int) -> int:
        """Instructions executed by the last ``emu_start(count=count)``.

        The counter is bumped before each instruction runs; when the budget stops the
        CPU it has been bumped once more for the instruction that did not run.
        """
        return min(self._counter.value, count)

    # -- fault recovery ----------------------------------------------------------------
    def forget_fault(self) -> None:
        """Undo QEMU's memory of the last fault so the next one is not taken as #DF."""
        if self._fault_ctx is None:
            self._fault_ctx = self.uc.context_save()
        else:
            self.uc.context_update(self._fault_ctx)
        ctypes.c_int32.from_address(self._fault_ctx.context.value + self._old_exception_offset).value = -1
        self.uc.context_restore(self._fault_ctx)

    # -- privilege ------------------------------------------------------------------------
    def enter_ring0(self, cs: int, ss: int) -> None:
        """Drop the CPU to CPL 0 with ring-0 selectors ``cs``/``ss`` from the current GDT.

        With CR0.PE clear, a segment load is a real-mode load whose DPL is 0, and QEMU
        takes the CPL from SS: so one SS write in "real mode" makes the CPU ring 0.
        """
        cr0 = self.read(CR0)
        self.write(CR0, cr0 & ~CR0_PE)
        self.write(SS, 0)
        self.write(CR0, cr0)
        if not self.try_write(SS, ss):
            raise CpuError(f"cannot load ring-0 SS {ss:#x}")
        if not self.try_write(CS, cs):
            raise CpuError(f"cannot load ring-0 CS {cs:#x}")
