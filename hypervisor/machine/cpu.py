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
* **changing CPL from outside.** Writing CS does not change the privilege level; the
  CPL is SS's DPL. ``enter_ring0`` briefly clears CR0.PE so that a real-mode SS load
  drops the CPL to 0, then loads the target ring-0 segments: a monitor "teleports"
  into a ring-0 handler without running any code of its own.
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
import struct
from dataclasses import dataclass
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


# QEMU's hflags bits (target/i386/cpu.h of the QEMU 5.0 inside Unicorn 2); the probe checks them.
HF_CPL_MASK = 3 << 0
HF_INHIBIT_IRQ_MASK = 1 << 3     # the sti / mov ss interrupt shadow
HF_PE_MASK = 1 << 7

_GPRS = (EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI)
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


class Cpu:
    """One x86 CPU: a Unicorn instance plus fast register access and the tricks above."""

    def __init__(self, tcg_buffer_mib: int = 128):
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.uc.ctl_set_tcg_buffer_size(tcg_buffer_mib << 20)
        self._handle = self.uc._uch
        self._value = ctypes.c_uint64()
        self._ref = ctypes.byref(self._value)
        layout = private_layout()
        self._counter = ctypes.c_uint64.from_address(self._handle.value + layout.counter)
        env = _env_at(self.uc, layout.cpu_pointer, layout.cpu_env)
        if env is None:
            raise CpuError("this CPU's state is not where the probe found it")
        self._stopped_at: int | None = None
        self._hflags = ctypes.c_uint32.from_address(env + layout.hflags)
        self.eflags_address = env + layout.eflags       # where IF lives, for the native block hook
        self._error_code = ctypes.c_int32.from_address(env + layout.error_code)
        self._old_exception = ctypes.c_int32.from_address(env + layout.old_exception)

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
        """The CPL as QEMU checks privilege: hflags' copy of SS.DPL (0 in real mode)."""
        return self._hflags.value & HF_CPL_MASK

    # -- the instruction counter ------------------------------------------------------
    def run(self, eip: int, until: int, count: int) -> None:
        """``emu_start`` for exactly ``count`` instructions at most (see ``executed``)."""
        self._stopped_at = None
        self.uc.emu_start(eip, until, count=count)

    def stop(self) -> None:
        """``emu_stop`` from a hook, remembering how many instructions had run.

        Unicorn notices the stop at the next instruction's exit check, which comes after
        that instruction has already bumped the counter: without this, every stop from a
        port-I/O hook would count one instruction that never ran.
        """
        if self._stopped_at is None:
            self._stopped_at = self._counter.value
        self.uc.emu_stop()

    def executed(self, count: int) -> int:
        """Instructions executed by the last ``run(count=count)``.

        The counter is bumped before each instruction runs; when the budget stops the
        CPU it has been bumped once more for the instruction that did not run, and a stop
        asked from a hook may have bumped it for the next one (``stop``).
        """
        done = min(self._counter.value, count)
        return done if self._stopped_at is None else min(done, self._stopped_at)

    # -- exceptions and the interrupt shadow ------------------------------------------------
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

    # -- what the lead's monitor asks (fallbacks until the probes below provide them) ----------
    def software_interrupt_raised(self) -> bool:
        """Was the exception being delivered raised by int n / int3 / into (not a fault)?
        Without a probe of QEMU's exception_is_int, the monitor checks the bytes before EIP."""
        return True

    def interrupt_window_watch(self):
        """A native block hook that stops the CPU when IF goes up, or None without one."""
        try:
            from .native.ifwatch import InterruptWindowWatch
        except ImportError:
            return None
        return InterruptWindowWatch(self)
