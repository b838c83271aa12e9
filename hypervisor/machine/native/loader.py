"""Loading the C callbacks built by setup.py, and registering them with Unicorn through ctypes.

Each C file here is compiled by the install step into a plain shared library (an
Extension named ``hypervisor.machine.native._<name>``), found with importlib and opened
with ctypes. Unicorn's own functions reach the C code as pointers, so nothing links
against the library. A callback that cannot be loaded yields None and a reason; its
caller then runs a Python fallback after a one-line warning.
"""
from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass

from unicorn.unicorn_py3.unicorn import uclib

# Our own handle on libunicorn, so the prototypes set here touch no one else's (the binding's).
# uc_hook_add is variadic in C; for the hooks registered here the variadic part is empty.
libunicorn = _uc = ctypes.CDLL(uclib._name)
_uc.uc_hook_add.restype = ctypes.c_int
_uc.uc_hook_add.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_int,
                            ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
_uc.uc_strerror.restype = ctypes.c_char_p
_uc.uc_strerror.argtypes = [ctypes.c_int]


@dataclass(frozen=True)
class Loaded:
    """A loaded C callback: its address, and the library object that keeps it mapped."""
    library: ctypes.CDLL
    address: int


_loaded: dict[str, Loaded | str] = {}


def load_callback(extension: str, symbol: str, source: str) -> Loaded | None:
    """The C function ``symbol`` of the built ``extension``, once per process; None if absent
    (``why_not(extension)`` says why)."""
    if extension not in _loaded:
        try:
            spec = importlib.util.find_spec(extension)
            if spec is None or not spec.origin:
                raise OSError(f"{source} was not built (reinstall with `pip install -e .`)")
            library = ctypes.CDLL(spec.origin)
            _loaded[extension] = Loaded(library, ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value)
        except (OSError, AttributeError, ImportError) as e:
            _loaded[extension] = str(e) or type(e).__name__
    found = _loaded[extension]
    return found if isinstance(found, Loaded) else None


def why_not(extension: str) -> str | None:
    found = _loaded.get(extension)
    return found if isinstance(found, str) else None


def uc_hook_add(uc, hook_type: int, callback: int, user_data: int, begin: int, end: int) -> int:
    """Register a C callback with Unicorn; returns the hook handle."""
    handle = ctypes.c_size_t()
    err = _uc.uc_hook_add(uc._uch, ctypes.byref(handle), hook_type, callback, user_data, begin, end)
    if err:
        raise RuntimeError(f"uc_hook_add failed: {_uc.uc_strerror(err).decode()}")
    return handle.value


def uc_reg_read_address() -> int:
    """The address of ``uc_reg_read``, for C code that reads a register."""
    return ctypes.cast(_uc.uc_reg_read, ctypes.c_void_p).value


def uc_mem_read_address() -> int:
    """The address of ``uc_mem_read``, for C code that reads guest memory."""
    return ctypes.cast(_uc.uc_mem_read, ctypes.c_void_p).value
