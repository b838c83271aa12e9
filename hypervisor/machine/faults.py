"""The two ways an access to guest memory can fail: the guest's fault, or a bus with nothing on it.

A CPU that reads memory on a program's behalf either succeeds or raises an exception *in
the program*: a #PF with an error code and CR2, a #GP or #SS from a segment limit. Python
code that reads guest memory for the monitor (a descriptor, a TSS, an iret frame, an
operand) must fail the same way, or a hostile guest could make a Python error escape
from the monitor. So every reader of guest memory raises exactly one of these:

* ``GuestFault`` — an exception the *guest* must receive, as the hardware would have
  raised it (vector, error code, CR2 for a #PF). The monitor injects it; nothing here is
  the monitor's failure.
* ``BusError`` — a physical address with no RAM behind it (a page table, or a page, placed
  beyond the end of memory). A real PC would read open bus; this project refuses, and the
  monitor turns it into a clean report that the guest crashed. It is an ``IndexError`` so
  that older ``except IndexError`` sites keep catching it.

The vector numbers are the SDM's; ``machine/interrupts.py`` names all of them and imports
this module, so the few this file needs are spelled out here rather than imported.
"""
from __future__ import annotations

GP_VECTOR = 13
SS_VECTOR = 12
PF_VECTOR = 14


class GuestFault(Exception):
    """An exception the guest itself must receive (the monitor injects it)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                 why: str = ""):
        detail = f"vector {vector}"
        if error_code is not None:
            detail += f", error code {error_code:#x}"
        if cr2 is not None:
            detail += f", cr2 {cr2:#010x}"
        super().__init__(f"{why} ({detail})" if why else detail)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.why = why

    def __repr__(self) -> str:
        return (f"GuestFault(vector={self.vector}, error_code={self.error_code!r}, "
                f"cr2={self.cr2!r}, why={self.why!r})")


class BusError(IndexError):
    """A physical access outside the guest's RAM."""

    def __init__(self, address: int, length: int, why: str = ""):
        super().__init__(why or f"guest-physical {address:#x}+{length} is outside RAM")
        self.address = address
        self.length = length
