"""The CPU's own reads of the monitor's memory, let through without Python (see readguard.c).

``ReadGuard`` puts a UC_HOOK_MEM_READ over a range and calls ``hook(address, size)`` only
for reads that are not the CPU's own: not while ``flags.open`` is set (the monitor is loading
segment registers, whose descriptors live in that range), and not a descriptor read by the
guest's own iret or retf. The filter is C, built by the package's install step;
without it the same filter runs in Python after a one-line warning, just as exact but
paying a Python call for every read (~35 per trap-and-emulate system call). The environment
variable ``HVSIM_READGUARD=python`` (or ``native=False``) chooses the Python filter.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable

from unicorn import UC_HOOK_MEM_READ, UcError
from unicorn import x86_const as X

from ..cpu import CS, ESP, SS

from .loader import Loaded, load_callback, uc_hook_add, uc_mem_read_address, uc_reg_read_address

_PYTHON_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                                ctypes.c_int64, ctypes.c_void_p)
_warned = False


class _Guard(ctypes.Structure):
    """``struct guard`` in readguard.c, field for field."""
    _fields_ = [("open", ctypes.c_int32), ("eip_regid", ctypes.c_int32),
                ("reg_read", ctypes.c_void_p), ("python", ctypes.c_void_p), ("mem_read", ctypes.c_void_p),
                ("cs_base", ctypes.c_void_p), ("ss_base", ctypes.c_void_p), ("esp", ctypes.c_void_p),
                ("tables", ctypes.c_uint64), ("tables_end", ctypes.c_uint64), ("calls", ctypes.c_uint64)]


def native_filter() -> Loaded | None:
    return load_callback("hypervisor.machine.native._readguard", "hv_readguard", "readguard.c")


class ReadGuard:
    """A read hook over [begin, end] that asks Python only about reads the CPU did not make itself."""

    def __init__(self, cpu, begin: int, end: int, tables: tuple[int, int],
                 hook: Callable[[int, int], None], on_error: Callable[[Exception], None],
                 native: bool | None = None):
        uc = cpu.uc
        self._hook, self._on_error = hook, on_error
        self._tables, self._cpu = tables, cpu
        cs_base, ss_base, esp = cpu.state_addresses()
        self._guard = _Guard(0, X.UC_X86_REG_EIP, uc_reg_read_address(), None, uc_mem_read_address(),
                             cs_base, ss_base, esp, tables[0], tables[1], 0)
        if native is None and os.environ.get("HVSIM_READGUARD", "").lower() == "python":
            native = False
        loaded = native_filter() if native is not False else None
        if loaded is None:
            if native is None:
                _warn_once()
            self._python_open = False
            uc.hook_add(UC_HOOK_MEM_READ, self._python_filter, None, begin, end)
            self.native = False
            return
        self._library = loaded                      # keeps the library mapped
        self._callback = _PYTHON_HOOK(self._from_c)  # keeps the trampoline alive
        self._guard.python = ctypes.cast(self._callback, ctypes.c_void_p)
        uc_hook_add(uc, UC_HOOK_MEM_READ, loaded.address, ctypes.addressof(self._guard), begin, end)
        self.native = True

    @property
    def flags(self) -> _Guard:
        """The structure the C filter reads: set ``flags.open`` to 1 while the monitor loads
        segment registers (and back to 0 after), so that its descriptor reads pass."""
        return self._guard

    def _from_c(self, uc, access, address, size, value, user) -> None:
        try:
            self._hook(address, size)
        except Exception as e:          # ctypes would print it and go on: hand it to the hook's owner
            self._on_error(e)

    @property
    def python_calls(self) -> int:
        """Reads the C filter handed to Python so far (for tests)."""
        return self._guard.calls

    def _python_filter(self, uc, access, address, size, value, _) -> None:
        """The C filter's rules, in Python (see readguard.c)."""
        if self._guard.open:
            return
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        if self._tables[0] <= address and address + size <= self._tables[1]:
            frame = self._return_frame(uc, eip)
            if frame is not None and (address + size <= frame[0] or address >= frame[1]):
                return
        self._guard.calls += 1
        self._hook(address, size)

    def _return_frame(self, uc, eip: int) -> tuple[int, int] | None:
        cpu = self._cpu
        try:
            code = bytes(uc.mem_read((cpu.segment_register(CS)[1] + eip) & 0xFFFFFFFF, 4))
        except UcError:
            return None
        at = 0
        while at < 2 and code[at] in (0x66, 0x67):
            at += 1
        pops = {0xCF: 20, 0xCB: 16}.get(code[at])
        if code[at] == 0xCA:
            pops = 16 + int.from_bytes(code[at + 1:at + 3], "little")
        if pops is None:
            return None
        start = (cpu.segment_register(SS)[1] + cpu.read(ESP)) & 0xFFFFFFFF
        return start, start + pops


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        print("hvsim: native read filter unavailable; trap's monitor-memory hook runs in Python (slower)",
              file=sys.stderr)
