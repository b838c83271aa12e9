"""The CPU's one block hook: instructions counted per translated block, deadlines, the interrupt window.

Three things a monitor needs from the CPU that Unicorn gives only slowly or not at all:

* **How many instructions ran.** ``emu_start(count=N)`` counts exactly, but compiles a
  helper call and an exit check in front of *every* instruction (1.6-2x on compute code,
  12-16x on tight loops). QEMU translates code in blocks and knows each block's
  instruction count; a block hook that adds it costs one helper call per block. The count
  is exact at block boundaries; in the middle of a block (an exit from a hook) the CPU
  adds the instructions from the block's start to EIP (``Cpu.executed``).
* **Stopping at a deadline.** Without ``count=``, nothing stops the CPU after N
  instructions. The hook stops it *before* the first block that starts with the count at
  or past the deadline: the first block boundary at or after it. Where that is depends
  only on the code, so it is deterministic.
* **Seeing IF go up.** On a real PC an interrupt that arrives while IF is 0 waits in the
  PIC, and the CPU takes it at the first instruction boundary where IF is 1 (after the
  one-instruction shadow of an ``sti``). Under the native technique ``sti``, ``popf``
  and ``iret`` run inside Unicorn and tell the monitor nothing. QEMU's translator ends a
  block after every instruction that can set IF and translates ``sti``'s shadow
  instruction as a block of its own, so IF can only become 1 at a block boundary, and
  the hook, while armed, stops the CPU at the first block that starts with IF set.

A Python block hook costs 0.5-0.9 µs per block (17-140x on tight loops), so the callback
is C (``blockhook.c``), built by the package's install step and loaded here with ctypes.
It is registered once, when the CPU is made: Unicorn compiles a block hook into each block
as it translates it, so it must exist before any code is translated, and deleting it
would invalidate every block. Its state is a record in memory that C and Python share.

Block counting is the CPU's default. Exactness where a block boundary is not enough (the
budget of --max-instructions, port I/O refused above the IOPL) is ``Cpu.run``'s: the hook
only stops the CPU before the block (STOP_CROSSING, STOP_IO).

Without the C callback (no compiler at install time) the CPU counts with ``count=`` as
before, after a one-line warning, and the window watch runs as a Python block hook, just
as exact and ~24x slower; the environment variable ``HVSIM_COUNTING=count`` (or
``Cpu(counting="count")``) forces that mode with the C hook present, to compare the two.
"""
from __future__ import annotations

import ctypes
import struct
import sys
import weakref
from dataclasses import dataclass

from unicorn import UC_HOOK_BLOCK
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from .loader import Loaded, libunicorn, load_callback
from .loader import why_not as loader_why_not

EFLAGS_IF = 1 << 9
EXTENSION = "hypervisor.machine.native._blockhook"     # setup.py builds blockhook.c under this name
CALLBACK = "hv_block"
CACHE_SIZE = 4096                                      # blockhook.c's CACHE_SIZE
STOP_NONE, STOP_DEADLINE, STOP_WINDOW, STOP_UNKNOWN, STOP_CROSSING, STOP_IO, STOP_NMI, STOP_ALIGN, STOP_WATCH = range(9)
IO_KNOWN, HAS_IO, ALIGN_KNOWN, HAS_ALIGNED, WATCH_KNOWN, HAS_WATCHED, HAS_WATCHED_NT = 1, 2, 4, 8, 16, 32, 64  # flags
NO_PASS = (1 << 64) - 1                                # pass_at: no block start is let through
# uc_ctl's code for "request the translated block at an address" (unicorn.h: UC_CTL_READ_WRITE(.., 2)).
CTL_REQUEST_CACHE = U.UC_CTL_TB_REQUEST_CACHE | (2 << 26) | (U.UC_CTL_IO_READ_WRITE << 30)


class _Entry(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint64), ("size", ctypes.c_uint32), ("icount", ctypes.c_uint16),
                ("flags", ctypes.c_uint16)]


class _Record(ctypes.Structure):
    """``struct record`` in blockhook.c, field for field."""
    _fields_ = [
        ("counter", ctypes.c_uint64),
        ("deadline", ctypes.c_uint64),
        ("block_address", ctypes.c_uint64),
        ("block_size", ctypes.c_uint32),
        ("block_icount", ctypes.c_uint32),
        ("counting", ctypes.c_int32),
        ("stopped", ctypes.c_int32),
        ("armed", ctypes.c_int32),
        ("fired", ctypes.c_int32),
        ("window_address", ctypes.c_uint64),
        ("eflags", ctypes.c_uint64),
        ("eflags_regid", ctypes.c_int32),
        ("ctl_request_cache", ctypes.c_int32),
        ("reg_read", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
        ("ctl", ctypes.c_void_p),
        ("eflags_at", ctypes.c_void_p),
        ("unknown_address", ctypes.c_uint64),
        ("unknown_size", ctypes.c_uint32),
        ("misses", ctypes.c_uint32),
        ("exact", ctypes.c_int32),
        ("io_guard", ctypes.c_int32),
        ("hflags_at", ctypes.c_void_p),
        ("invalidations_at", ctypes.c_void_p),
        ("invalidations_seen", ctypes.c_uint64),
        ("flushes_at", ctypes.c_void_p),
        ("flushes_seen", ctypes.c_uint32),
        ("unknown_icount", ctypes.c_uint32),
        ("unknown_flags", ctypes.c_uint32),
        ("learn", ctypes.c_void_p),
        ("skip_sync_at", ctypes.c_void_p),
        ("after_fault", ctypes.c_int32),
        ("io_guard_cpl", ctypes.c_int32),
        ("fast", ctypes.c_int32),
        ("nmi_armed", ctypes.c_int32),
        ("hflags2_at", ctypes.c_void_p),
        ("cr4_at", ctypes.c_void_p),
        ("pass_at", ctypes.c_uint64),
        ("watch", ctypes.c_int32),
        ("fast_mask", ctypes.c_uint32),
        ("fast_value", ctypes.c_uint32),
        ("learn_from", ctypes.c_uint64),
        ("cache", _Entry * CACHE_SIZE),
    ]


_LEARN = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32)


def _learned(cpu, address: int, size: int) -> int:
    """blockhook.c's ``learn``: a block's instruction count and flags, decoded by the CPU;
    0 (the hook then stops before the block) where anything goes wrong: no traceback
    may cross the C frame."""
    try:
        icount, flags = cpu._decode_block(address, size)[:2]
        return (icount & 0xFFFF) | flags << 16 if 0 < icount <= 0xFFFF else 0
    except Exception:
        return 0


EXTENSION_SOURCE = "blockhook.c"
NativeCallback = Loaded
_warned = False


def load_native() -> Loaded | None:
    """The C callback, loaded once per process; None (and the reason in ``why_not()``) if absent."""
    return load_callback(EXTENSION, CALLBACK, EXTENSION_SOURCE)


def why_not() -> str | None:
    """Why the C callback could not be loaded, or None if it was (or was not tried yet)."""
    return loader_why_not(EXTENSION)


def warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"hvsim: native block hook unavailable ({reason}); counting with emu_start(count=), "
              f"about 2x slower", file=sys.stderr)


class BlockHook:
    """The C block hook of one CPU and its record (see the module docstring).

    ``counting=True``: the hook counts and stops at ``deadline``; ``False``: the CPU counts
    with ``count=`` and the hook only watches the window. Made once per CPU, before any code
    is translated (it flushes translated code all the same, so earlier blocks call it too).
    """

    def __init__(self, cpu, callback: NativeCallback, counting: bool):
        self.record = r = _Record(eflags_regid=X.UC_X86_REG_EFLAGS, ctl_request_cache=CTL_REQUEST_CACHE,
                                  counting=int(counting), pass_at=NO_PASS, learn_from=NO_PASS)
        r.reg_read = ctypes.cast(libunicorn.uc_reg_read, ctypes.c_void_p).value
        r.emu_stop = ctypes.cast(libunicorn.uc_emu_stop, ctypes.c_void_p).value
        r.ctl = ctypes.cast(libunicorn.uc_ctl, ctypes.c_void_p).value
        r.eflags_at = getattr(cpu, "eflags_address", None)
        r.hflags_at = getattr(cpu, "hflags_address", None)
        r.hflags2_at = r.hflags_at + 4 if r.hflags_at else None     # Cpu.nmi_blocked's word
        counters = translation_counters()
        if counters is not None:
            r.invalidations_at, r.flushes_at = counters.at(cpu.uc)
        self._invalidations = ctypes.c_uint64.from_address(r.invalidations_at) if r.invalidations_at else None
        self.exact_cache = counters is not None
        skip_sync = skip_sync_offset()
        if skip_sync is not None:
            r.skip_sync_at = cpu.uc._uch.value + skip_sync
        # The fast path (hv_block) reads these pointers without a test for NULL.
        r.fast = int(bool(counting and r.invalidations_at and r.flushes_at and r.eflags_at and r.hflags_at))
        self._learn = _LEARN(lambda address, size: _learned(cpu, address, size))
        r.learn = ctypes.cast(self._learn, ctypes.c_void_p).value
        handle = ctypes.c_size_t()
        err = libunicorn.uc_hook_add(cpu._handle, ctypes.byref(handle), UC_HOOK_BLOCK, callback.address,
                              ctypes.addressof(r), 1, 0)
        if err:
            raise OSError(f"uc_hook_add(UC_HOOK_BLOCK) failed: {libunicorn.uc_strerror(err).decode()}")
        self.hook = handle.value
        self.counting = counting
        # Unicorn calls into the record and the library for as long as the Uc lives, whoever
        # still holds this object: tie their lifetime to the Uc's.
        weakref.finalize(cpu.uc, _keep_alive, r, callback)
        cpu.uc.ctl_flush_tb()

    def learn(self, address: int, size: int, icount: int, flags: int = 0) -> None:
        """Fill the cache entry for the block at ``address`` of ``size`` bytes."""
        slot = ((((address ^ (address >> 13)) * 0x9E3779B1) & 0xFFFFFFFF) ^ size) & (CACHE_SIZE - 1)
        entry = self.record.cache[slot]
        entry.address, entry.size, entry.icount, entry.flags = address, size, icount, flags

    def dropped_own_blocks(self) -> None:
        """The CPU itself dropped translated blocks whose code did not change (to re-translate
        one shorter, ``Cpu._run_prefix``): the cache stays valid, so do not let the count
        the hook watches wipe it."""
        if self._invalidations is not None:
            self.record.invalidations_seen = self._invalidations.value

    def forget(self) -> None:
        """Empty the cache (after code the CPU may have run was rewritten behind its back)."""
        ctypes.memset(ctypes.addressof(self.record.cache), 0, ctypes.sizeof(self.record.cache))


_skip_sync: int | None | bool = False


def skip_sync_offset() -> int | None:
    """Offset in uc_struct of ``skip_sync_pc_on_exit`` (a bool), or None where the probe fails.

    Found on a scratch CPU as the one byte that a hook's EIP write from a fault's hook leaves
    set after ``emu_start`` returns, that a plain run leaves clear, and that a register write
    of EIP outside a run sets (``quit_request``, its neighbour, is cleared by the run loop).
    """
    global _skip_sync
    if _skip_sync is False:
        try:
            _skip_sync = _probe_skip_sync()
        except Exception:
            _skip_sync = None
    return _skip_sync


def _probe_skip_sync() -> int | None:
    from unicorn import Uc, UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(4 << 20)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, b"\xcc" + b"\x90" * 15 + b"\xf4")     # int3; ...; 0x1010: hlt
    from ..cpu import _peek                 # uc_struct is large and ends with the flag: read safely
    span = 0x10000
    state = lambda: _peek(uc._uch.value, span) or b""
    uc.emu_start(0x1010, 0x2000)
    plain = state()
    uc.reg_write(X.UC_X86_REG_EIP, 0x1010)
    written = state()
    uc.hook_add(UC_HOOK_INTR, lambda uc, intno, _: uc.reg_write(X.UC_X86_REG_EIP, 0x1010))
    uc.emu_start(0x1000, 0x2000)
    after_hook = state()
    found = [o for o in range(min(len(plain), len(written), len(after_hook)))
             if plain[o] == 0 and written[o] == 1 and after_hook[o] == 1]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class TranslationCounters:
    """Where QEMU counts dropped translated blocks, found by experiment (``translation_counters``).

    ``tcg_pointer``: offset in uc_struct of ``uc->tcg_ctx``; ``invalidations``: offset in the
    TCGContext of ``tb_phys_invalidate_count`` (u64, one per block dropped); ``flushes``: of
    ``tb_ctx.tb_flush_count`` (u32, one per flush of every block).
    """
    tcg_pointer: int
    invalidations: int
    flushes: int

    def at(self, uc) -> tuple[int, int]:
        tcg = ctypes.c_uint64.from_address(uc._uch.value + self.tcg_pointer).value
        return tcg + self.invalidations, tcg + self.flushes


_counters: TranslationCounters | None | bool = False


def translation_counters() -> TranslationCounters | None:
    """The counters the cache watches, or None (then the cache is never trusted: every
    block asks Unicorn for its count, exact and slower) where the probe fails.

    The offset of ``tb_phys_invalidate_count`` is read from the one instruction of the
    library's own accessor (``tcg_tb_phys_invalidate_count_x86_64``: ``mov rax, [rdi + d]``);
    the TCGContext pointer and the flush count are then found on a scratch CPU, as the
    values that grow by exactly one per block dropped and per flush, and by nothing else.
    """
    global _counters
    if _counters is False:
        try:
            _counters = _probe_counters()
        except Exception:               # any surprise: no cache rather than a wrong one
            _counters = None
    return _counters


def _probe_counters() -> TranslationCounters | None:
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    from unicorn import Uc, UC_ARCH_X86, UC_MODE_32
    from ..cpu import _peek
    accessor = getattr(libunicorn, "tcg_tb_phys_invalidate_count_x86_64", None)
    if accessor is None:
        return None
    address = ctypes.cast(accessor, ctypes.c_void_p).value
    body = list(Cs(CS_ARCH_X86, CS_MODE_64).disasm(ctypes.string_at(address, 16), address, 2))
    if len(body) != 2 or body[0].mnemonic != "mov" or body[1].mnemonic != "ret" or \
            not body[0].op_str.startswith("rax, qword ptr [rdi + "):
        return None
    invalidations = int(body[0].op_str.split("+ ")[1].rstrip("]"), 0)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.ctl_set_tcg_buffer_size(4 << 20)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, b"\x40\xf4")                  # inc eax; hlt
    words = (ctypes.c_uint64 * 0x800).from_address(uc._uch.value)

    def translate_and_drop() -> None:
        uc.emu_start(0x1000, 0x2000)
        uc.ctl_remove_cache(0x1000, 0x1001)

    translate_and_drop()
    candidates = {}
    for i in range(0x800):
        pointer = words[i]
        if 0x10000 <= pointer < 1 << 47 and not pointer & 7:
            value = _peek(pointer + invalidations, 8)
            if value is not None and len(value) == 8:
                candidates[i * 8] = int.from_bytes(value, "little")
    for step in range(1, 3):
        translate_and_drop()
        candidates = {o: v for o, v in candidates.items()
                      if int.from_bytes(_peek(words[o // 8] + invalidations, 8) or b"", "little") == v + step}
    tcgs = {words[o // 8] for o in candidates}
    if len(tcgs) != 1:
        return None
    tcg_pointer = min(candidates)
    tcg = words[tcg_pointer // 8]
    span = 0x40000
    before = _peek(tcg, span)
    if before is None:
        return None
    snapshots = [before]
    for _ in range(3):
        uc.emu_start(0x1000, 0x2000)
        uc.ctl_flush_tb()
        snapshots.append(_peek(tcg, span) or b"")
    u32 = struct.Struct("<I").unpack_from
    flushes = [o for o in range(0, span, 4)
               if all(len(s) == span and u32(s, o)[0] == u32(before, o)[0] + k for k, s in enumerate(snapshots))]
    uc.emu_start(0x1000, 0x2000)
    uc.ctl_remove_cache(0x1000, 0x1001)
    still = _peek(tcg, span) or b""
    flushes = [o for o in flushes if len(still) == span and u32(still, o)[0] == u32(snapshots[-1], o)[0]
               and o != invalidations]
    if len(flushes) != 1:
        return None
    return TranslationCounters(tcg_pointer, invalidations, flushes[0])



class InterruptWindowWatch:
    """Stops the CPU at the first block that starts with EFLAGS.IF = 1, while armed.

    ``arm()`` when an interrupt waits and the guest's IF is 0 (from Python or from inside
    another hook); ``emu_start`` then returns at the first block start where IF is 1, with
    ``fired`` True, EIP = ``address`` and no instruction of that block run (nor counted).
    Firing disarms the watch (one shot); ``arm()`` again to wait for the next window.

    With the C hook it is a view of the CPU's block-hook record; without it (``native=False``
    forces that) the same watch runs as a Python block hook, after a one-line warning.
    """

    def __init__(self, cpu, native: bool | None = None):
        self._cpu = cpu
        hook = getattr(cpu, "block_hook", None)
        if native is True and hook is None:
            raise OSError(f"native block hook unavailable: {why_not()}")
        self.native = hook is not None and native is not False
        if self.native:
            self._watch = hook.record
            self.hook = hook.hook
        else:
            self._watch = _Record(eflags_regid=X.UC_X86_REG_EFLAGS)
            if native is None:
                warn_once(why_not() or "not loaded")
            self.hook = cpu.uc.hook_add(UC_HOOK_BLOCK, self._python_block)
            cpu.uc.ctl_flush_tb()     # blocks translated before this hook would never call it

    # -- the monitor's side ------------------------------------------------------------
    def arm(self) -> None:
        """Stop at the next block start where IF is 1 (at once, if IF is 1 already)."""
        self._watch.fired = 0
        self._watch.armed = 1

    def disarm(self) -> None:
        self._watch.armed = 0

    @property
    def armed(self) -> bool:
        return bool(self._watch.armed)

    @property
    def fired(self) -> bool:
        """True when the last run stopped because IF was 1 (until the next ``arm()``)."""
        return bool(self._watch.fired)

    @property
    def address(self) -> int:
        """The block start (guest EIP) where the watch fired."""
        return self._watch.window_address

    @property
    def eflags(self) -> int:
        """EFLAGS as the watch read it when it fired."""
        return self._watch.eflags

    # -- the fallback ------------------------------------------------------------------------
    def _python_block(self, uc, address: int, size: int, _user) -> None:
        """blockhook.c's window watch, line for line, at Python speed."""
        w = self._watch
        if not w.armed:
            return
        eflags = self._cpu.read(X.UC_X86_REG_EFLAGS)
        if not eflags & EFLAGS_IF:
            return
        w.armed, w.fired, w.window_address, w.eflags = 0, 1, address, eflags
        uc.emu_stop()


def _keep_alive(*_objects) -> None:
    """weakref.finalize callback whose only job is to hold its arguments until the Uc dies."""
