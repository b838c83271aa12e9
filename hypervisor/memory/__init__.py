"""The lecture's three levels of address, as code: virtual -> pseudo-physical -> machine.

* virtual -> pseudo-physical: the guest's own page tables, walked by ``walker.py`` (the
  monitor's accesses) and by the C TLB fill (machine/native/tlbfill.c: the CPU's);
* the shadow that composes the two for trap: ``shadow.py`` (shadow page tables cached per address space);
* EPT, the monitor's second level for hvm: ``ept.py``;
* pseudo-physical -> machine: the P2M (``P2M``: a domain's ``GuestMemory``, its ``p2m`` list) and
  its inverse the M2P (``MachineMemory.m2p``), with the frame table, in machine/memory.py, where
  the machine's frames live.
"""
from ..machine.memory import GuestMemory as P2M
from ..machine.memory import MachineMemory
from .ept import Ept
from .shadow import ShadowPaging
from .walker import GuestAddressSpace, Paging, translate

__all__ = ["Ept", "GuestAddressSpace", "MachineMemory", "P2M", "Paging", "ShadowPaging", "translate"]
