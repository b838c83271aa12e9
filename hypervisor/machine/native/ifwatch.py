"""Seeing a native guest set IF: the interrupt window, watched at block starts.

On a real PC an interrupt that arrives while IF is 0 waits in the PIC, and the CPU
takes it at the first instruction boundary where IF is 1 (after the one-instruction
shadow of an ``sti``). Under the native technique the guest runs at real ring 0, so
``sti``, ``popf`` and ``iret`` run inside Unicorn and tell the monitor nothing, and
Unicorn has no "interrupt window" exit for it to ask for either.

What Unicorn does have is QEMU's translator, which ends a translated block after every
instruction that can set IF (``sti``, ``popf``, ``iret``, a task switch) and translates
``sti``'s shadow instruction as a block of its own. So IF can only become 1 at a block
boundary, and a UC_HOOK_BLOCK callback that reads EFLAGS at each block start sees it at
the first block that starts with IF set: for ``sti; nop``, the ``nop`` (the shadow
instruction, not yet run); for ``popf``/``iret``, the instruction they return to.

A Python block hook costs 0.5-0.9 µs per block (17-140x on tight loops), so the callback
is C (``ifwatch.c``), built by the package's install step and loaded here with ctypes. It
is registered once, when the watch is made, and armed and disarmed by a flag in memory the
C code and this module share. Unicorn compiles a block hook into each block as it translates
it, so adding a hook reaches older blocks only after a flush of translated code, and deleting
one invalidates every block it was compiled into: hooks are not to be added and removed per
event. Disarmed, the callback costs a helper call, one load and a return per block (~1 ns);
armed, ``uc_reg_read(EFLAGS)`` adds ~8-10 ns per block (QEMU computes the lazy flags).

When the C file could not be built or loaded, the same watch runs as a Python block hook,
after a one-line warning on stderr: just as exact, but ~24x slower on every block.
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
import weakref
from dataclasses import dataclass

from unicorn import UC_HOOK_BLOCK
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

EFLAGS_IF = 1 << 9
EXTENSION = "hypervisor.machine.native._ifwatch"     # setup.py builds ifwatch.c under this name
CALLBACK = "hv_ifwatch_block"


class _Watch(ctypes.Structure):
    """``struct watch`` in ifwatch.c, field for field."""
    _fields_ = [
        ("armed", ctypes.c_int32),
        ("fired", ctypes.c_int32),
        ("address", ctypes.c_uint64),
        ("eflags", ctypes.c_uint64),
        ("eflags_regid", ctypes.c_int32),
        ("pad", ctypes.c_int32),
        ("reg_read", ctypes.c_void_p),
        ("emu_stop", ctypes.c_void_p),
        ("eflags_at", ctypes.c_void_p),
    ]


# Our own handle on libunicorn, so the prototypes set here touch no one else's (cpu.py keeps
# its uc_reg_read prototype-free for speed). uc_hook_add is variadic in C; for a block hook
# the variadic part is empty, and these are the fixed arguments as the Python binding declares them.
_uc = ctypes.CDLL(uclib._name)
_uc.uc_hook_add.restype = ctypes.c_int
_uc.uc_hook_add.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
_uc.uc_strerror.restype = ctypes.c_char_p
_uc.uc_strerror.argtypes = [ctypes.c_int]


@dataclass(frozen=True)
class NativeCallback:
    """The loaded C callback: its address, and the library object that keeps it mapped."""
    library: ctypes.CDLL
    address: int


_loaded: NativeCallback | None = None
_why_not: str | None = None
_warned = False


def load_native() -> NativeCallback | None:
    """The C callback, loaded once per process; None (and the reason in ``why_not()``) if absent."""
    global _loaded, _why_not
    if _loaded is None and _why_not is None:
        try:
            spec = importlib.util.find_spec(EXTENSION)
            if spec is None or not spec.origin:
                raise OSError("ifwatch.c was not built (reinstall with `pip install -e .`)")
            library = ctypes.CDLL(spec.origin)
            _loaded = NativeCallback(library, ctypes.cast(getattr(library, CALLBACK), ctypes.c_void_p).value)
        except (OSError, AttributeError, ImportError) as e:
            _why_not = str(e) or type(e).__name__
    return _loaded


def why_not() -> str | None:
    """Why the C callback could not be loaded, or None if it was (or was not tried yet)."""
    return _why_not


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        print(f"hvsim: native block hook unavailable ({reason}); using a slow Python fallback",
              file=sys.stderr)


class InterruptWindowWatch:
    """Stops the CPU at the first block that starts with EFLAGS.IF = 1, while armed.

    Made once per CPU, outside ``emu_start``: it flushes translated code, so that blocks
    translated before it call the hook too. ``arm()`` when an interrupt waits and the
    guest's IF is 0 (from Python or from inside another hook); ``emu_start`` then returns at
    the first block start where IF is 1, with ``fired`` True, EIP = ``address`` and no
    instruction of that block run (nor counted). Firing disarms the watch (one shot);
    ``arm()`` again to wait for the next window.

    ``native=None`` uses the C callback when it was built, else the Python fallback with
    a one-line warning; ``native=False`` forces the fallback (tests, comparisons).
    """

    def __init__(self, cpu, native: bool | None = None):
        self._cpu = cpu
        self._watch = _Watch(eflags_regid=X.UC_X86_REG_EFLAGS)
        callback = load_native() if native is not False else None
        if native is True and callback is None:
            raise OSError(f"native block hook unavailable: {why_not()}")
        self.native = callback is not None
        if self.native:
            self._watch.reg_read = ctypes.cast(_uc.uc_reg_read, ctypes.c_void_p).value
            self._watch.emu_stop = ctypes.cast(_uc.uc_emu_stop, ctypes.c_void_p).value
            self._watch.eflags_at = getattr(cpu, "eflags_address", None)
            handle = ctypes.c_size_t()
            err = _uc.uc_hook_add(cpu._handle, ctypes.byref(handle), UC_HOOK_BLOCK, callback.address,
                                  ctypes.addressof(self._watch), 1, 0)
            if err:
                raise OSError(f"uc_hook_add(UC_HOOK_BLOCK) failed: {_uc.uc_strerror(err).decode()}")
            self.hook = handle.value
            # Unicorn calls into the record and the library for as long as the Uc lives,
            # whoever still holds this object: tie their lifetime to the Uc's.
            weakref.finalize(cpu.uc, _keep_alive, self._watch, callback)
        else:
            if native is None:
                _warn_once(why_not() or "not loaded")
            self.hook = cpu.uc.hook_add(UC_HOOK_BLOCK, self._python_block)
        # Blocks translated before this hook existed would never call it: retranslate them.
        cpu.uc.ctl_flush_tb()

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
        return self._watch.address

    @property
    def eflags(self) -> int:
        """EFLAGS as the watch read it when it fired."""
        return self._watch.eflags

    # -- the fallback ------------------------------------------------------------------------
    def _python_block(self, uc, address: int, size: int, _user) -> None:
        """ifwatch.c's hv_ifwatch_block, line for line, at Python speed."""
        w = self._watch
        if not w.armed:
            return
        eflags = self._cpu.read(X.UC_X86_REG_EFLAGS)
        if not eflags & EFLAGS_IF:
            return
        w.armed, w.fired, w.address, w.eflags = 0, 1, address, eflags
        uc.emu_stop()


def _keep_alive(*_objects) -> None:
    """weakref.finalize callback whose only job is to hold its arguments until the Uc dies."""
