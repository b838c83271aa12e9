"""The TLB fill while the guest's paging is off: guest stores at QEMU's speed (see tlbfill.c).

Unicorn since 2.1.2 keeps every *executable* TLB entry on the slow store path (its
stand-in for QEMU's "does this page hold translated code?"), and with paging off the
CPU's walker makes every page executable: each guest store then costs a helper call,
two memory-map lookups and a translated-code check, 5-10x a plain store. Unicorn also
lets a program fill the TLB itself (``UC_TLB_VIRTUAL`` + a UC_HOOK_TLB_FILL callback).
``TlbFill`` installs a C callback that fills identity entries, executable only for pages
code was ever fetched from, so stores to data pages take the fast path and stores to
code pages keep QEMU's self-modifying-code check.

The mode follows the guest's CR0.PG, because with paging on the CPU's own walker must
translate (page tables, accessed/dirty bits, #PF):

* paging off -> ``UC_TLB_VIRTUAL`` with the C fill;
* the guest sets PG (``mov cr0`` runs inside Unicorn: nothing tells the monitor) -> the
  CR0 write flushes the TLB, the next fill sees PG, refuses, and ``emu_start`` fails with
  UC_ERR_EXCEPTION, EIP on the next instruction and none of it run. ``after_run`` sees
  that, switches to ``UC_TLB_CPU`` and says "restart": the monitor runs the slice again
  from EIP. The instruction count is unaffected: the refused fill is the translation of
  the block after the ``mov cr0`` (that write ends its block), before any of it ran;
* PG clear again -> back to the C fill at the end of the next slice.

Switching walkers flushes the TLB (an entry made by one is never used by the other).

Without the C library (no compiler at install time) the CPU keeps its own walker: every
guest store runs slowly, exactly as before, after a one-line warning. The environment
variable ``HVSIM_TLB=cpu`` (or ``TlbFill(cpu, native=False)``) keeps the walker with the
library present, to compare the two.
"""
from __future__ import annotations

import ctypes
import os
import sys
import weakref

from unicorn import UC_ERR_EXCEPTION, UC_HOOK_TLB_FILL, UC_MEM_FETCH
from unicorn import unicorn_const as U
from unicorn import x86_const as X

from .loader import libunicorn as _uc, load_callback, uc_hook_add, uc_reg_read_address, why_not

EXTENSION = "hypervisor.machine.native._tlbfill"      # setup.py builds tlbfill.c under this name
CALLBACK = "hv_tlb_fill"
CR0_PG = 1 << 31
PAGES = 1 << 20                                        # 4 KiB pages in the 4 GiB linear space
# uc_ctl's codes (unicorn.h: UC_CTL_WRITE(type, nr) = type | nr << 26 | UC_CTL_IO_WRITE << 30).
CTL_TLB_FLUSH = U.UC_CTL_TLB_FLUSH | (0 << 26) | (U.UC_CTL_IO_WRITE << 30)
CTL_TLB_TYPE = U.UC_CTL_TLB_TYPE | (1 << 26) | (U.UC_CTL_IO_WRITE << 30)
TLB_CPU, TLB_VIRTUAL = U.UC_TLB_CPU, U.UC_TLB_VIRTUAL

_warned = False


class _Fill(ctypes.Structure):
    """``struct fill`` in tlbfill.c, field for field."""
    _fields_ = [
        ("paging", ctypes.c_int32),
        ("cr0_regid", ctypes.c_int32),
        ("fetch_type", ctypes.c_int32),
        ("flush_control", ctypes.c_int32),
        ("fills", ctypes.c_uint64),
        ("code_pages", ctypes.c_uint64),
        ("reg_read", ctypes.c_void_p),
        ("ctl", ctypes.c_void_p),
        ("executed", ctypes.c_void_p),
    ]


def native_fill():
    """The C callback (loaded once per process), or None; ``why_not(EXTENSION)`` says why."""
    return load_callback(EXTENSION, CALLBACK, "tlbfill.c")


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"hvsim: native TLB fill unavailable ({reason}); guest stores take Unicorn's slow path",
              file=sys.stderr)


class TlbFill:
    """One CPU's TLB fill: the C callback while CR0.PG is clear, the CPU's walker while set.

    Made once per CPU, before the guest runs. ``native=None`` installs the C callback when
    it was built (unless ``HVSIM_TLB=cpu``), else keeps the walker after a one-line
    warning; ``native=False`` keeps the walker; ``native=True`` insists on the callback.
    """

    def __init__(self, cpu, native: bool | None = None):
        self._cpu = cpu
        self.virtual = False                 # the C fill is the CPU's walker now
        self.switches = 0                    # walker changes so far (tests, benchmarks)
        if native is None and os.environ.get("HVSIM_TLB", "").lower() == "cpu":
            native = False
        callback = native_fill() if native is not False else None
        if native is True and callback is None:
            raise OSError(f"native TLB fill unavailable: {why_not(EXTENSION)}")
        self.native = callback is not None
        if not self.native:
            if native is None:
                _warn_once(why_not(EXTENSION) or "not loaded")
            return
        self._executed = (ctypes.c_uint8 * (PAGES // 8))()
        self._fill = f = _Fill(cr0_regid=X.UC_X86_REG_CR0, fetch_type=UC_MEM_FETCH, flush_control=CTL_TLB_FLUSH)
        f.reg_read = uc_reg_read_address()
        f.ctl = ctypes.cast(_uc.uc_ctl, ctypes.c_void_p).value
        f.executed = ctypes.addressof(self._executed)
        self.hook = uc_hook_add(cpu.uc, UC_HOOK_TLB_FILL, callback.address, ctypes.addressof(f), 1, 0)
        # Unicorn calls into the record, the bitmap and the library for as long as the Uc
        # lives, whoever still holds this object: tie their lifetime to the Uc's.
        weakref.finalize(cpu.uc, _keep_alive, f, self._executed, callback)
        if not cpu.read(X.UC_X86_REG_CR0) & CR0_PG:
            self._use(TLB_VIRTUAL)

    # -- the slice loop's side -------------------------------------------------------------
    def after_run(self, error: Exception | None) -> bool:
        """Called after every ``emu_start``: True when it failed only because the guest turned
        paging on under the C fill; the walker is the CPU's now, and the caller runs again
        from EIP. Otherwise (False) it returns to the C fill if paging is off again."""
        if self.virtual:
            if error is None or not self._fill.paging:
                return False
            self._fill.paging = 0
            self._use(TLB_CPU)
            return getattr(error, "errno", None) == UC_ERR_EXCEPTION
        if self.native and not self._cpu.read(X.UC_X86_REG_CR0) & CR0_PG:
            self._use(TLB_VIRTUAL)
        return False

    def _use(self, mode: int) -> None:
        handle = self._cpu.uc._uch
        err = _uc.uc_ctl(handle, CTL_TLB_TYPE, ctypes.c_int(mode)) or _uc.uc_ctl(handle, CTL_TLB_FLUSH)
        if err:
            raise OSError(f"uc_ctl(TLB mode {mode}) failed: {_uc.uc_strerror(err).decode()}")
        self.virtual = mode == TLB_VIRTUAL
        self.switches += 1

    # -- what tests and benchmarks look at -------------------------------------------------------
    def is_code_page(self, address: int) -> bool:
        """Was an instruction ever fetched from the page of ``address`` under the C fill?"""
        page = (address >> 12) & (PAGES - 1)
        return self.native and bool(self._executed[page >> 3] & (1 << (page & 7)))

    @property
    def fills(self) -> int:
        return self._fill.fills if self.native else 0

    @property
    def code_pages(self) -> int:
        return self._fill.code_pages if self.native else 0


def _keep_alive(*_objects) -> None:
    """weakref.finalize callback whose only job is to hold its arguments until the Uc dies."""
