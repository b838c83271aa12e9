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

A technique that virtualizes memory makes the callback its MMU instead
(hypervisor/memory/): ``use_shadow`` (trap: cached shadow page tables of the guest's tables,
filled by walks in C against the virtual CR0/CR3/CR4 the monitor keeps, with the guest's
page-table frames write-protected behind an alias window) or ``use_ept`` (hvm: the guest's own registers, and
an EPT every guest-physical access must pass). The callback stays the walker for good then.
A fill it refuses ends ``emu_start`` with EIP on the instruction and nothing of it done;
``after_run`` turns the refusal into a ``TranslationFault`` for the monitor: a #PF to
reflect, an EPT violation, or a bus error (a page outside RAM).

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

from dataclasses import dataclass

from unicorn import UC_MEM_WRITE

from ..faults import PF_VECTOR, BusError, GuestFault
from .loader import libunicorn as _uc, load_callback, uc_hook_add, uc_reg_read_address, why_not

EXTENSION = "hypervisor.machine.native._tlbfill"      # setup.py builds tlbfill.c under this name
CALLBACK = "hv_tlb_fill"
CR0_PG = 1 << 31
PAGES = 1 << 20                                        # 4 KiB pages in the 4 GiB linear space
# uc_ctl's codes (unicorn.h: UC_CTL_WRITE(type, nr) = type | nr << 26 | UC_CTL_IO_WRITE << 30).
CTL_TLB_FLUSH = U.UC_CTL_TLB_FLUSH | (0 << 26) | (U.UC_CTL_IO_WRITE << 30)
CTL_TLB_TYPE = U.UC_CTL_TLB_TYPE | (1 << 26) | (U.UC_CTL_IO_WRITE << 30)
TLB_CPU, TLB_VIRTUAL = U.UC_TLB_CPU, U.UC_TLB_VIRTUAL
MODE_IDENTITY, MODE_SHADOW, MODE_EPT = 0, 1, 2                      # tlbfill.c's MODE_*
FAULT_NONE, FAULT_PF, FAULT_EPT, FAULT_BUS, FAULT_UNSUPPORTED, FAULT_CODE = 0, 1, 2, 3, 4, 5
EPT_R, EPT_W, EPT_X, EPT_MMIO, EPT_CODE = 1, 2, 4, 8, 16            # per-frame rights (tlbfill.c)
EPT_RWX = EPT_R | EPT_W | EPT_X
EPT_TRANSLATION = 1 << 8             # qualification: the access itself, not a walk of the guest's tables
FRAMES_4G = 1 << 20                                                 # 4 KiB frames below 4 GiB

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
        ("mode", ctypes.c_int32),
        ("write_type", ctypes.c_int32),
        ("hflags_at", ctypes.c_void_p),
        ("cr0_at", ctypes.c_void_p),
        ("cr3_at", ctypes.c_void_p),
        ("cr4_at", ctypes.c_void_p),
        ("cr0", ctypes.c_uint32),
        ("cr3", ctypes.c_uint32),
        ("cr4", ctypes.c_uint32),
        ("pfns", ctypes.c_uint32),
        ("base", ctypes.c_void_p),
        ("p2m", ctypes.c_void_p),
        ("ept", ctypes.c_void_p),
        ("ept_frames", ctypes.c_uint32),
        ("fault", ctypes.c_int32),
        ("error_code", ctypes.c_uint32),
        ("qualification", ctypes.c_uint32),
        ("guest_physical", ctypes.c_uint64),
        ("sh", ctypes.c_void_p),
        ("hidden_faults", ctypes.c_uint64),
        ("tables_at", ctypes.c_void_p),
        ("alias_base", ctypes.c_uint64),
        ("uc", ctypes.c_void_p),
        ("notify", ctypes.c_void_p),
    ]


class ShadowStats(ctypes.Structure):
    """``struct shadow_stats`` in tlbfill.c: what the cached shadow page tables did."""
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "hits", "spaces_made", "spaces_reused", "evictions", "table_writes", "entries_dropped",
        "invalidations", "full_flushes")]

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in self._fields_}


_uc.uc_mmio_map.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64] + [ctypes.c_void_p] * 4
_NOTIFY = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint64)
_WALK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                         ctypes.c_uint32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                         ctypes.POINTER(ctypes.c_uint32))


@dataclass(frozen=True)
class TranslationFault:
    """Why the C fill refused a translation (the run ended with EIP on the instruction).

    ``kind``: FAULT_PF (the guest's own page fault: ``linear`` is its CR2, ``error_code`` the
    code the CPU pushes), FAULT_EPT (hvm: an EPT violation at ``guest_physical``, with the
    exit qualification's access and permission bits), FAULT_BUS (a page-table entry or the
    page itself outside RAM and every device), FAULT_UNSUPPORTED (PAE paging)."""
    kind: int
    linear: int
    error_code: int = 0
    qualification: int = 0
    guest_physical: int | None = None


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
        self._rights = None                  # the per-frame rights of a walking mode (EPT_*)
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
        self._fill = f = _Fill(cr0_regid=X.UC_X86_REG_CR0, fetch_type=UC_MEM_FETCH, flush_control=CTL_TLB_FLUSH,
                               write_type=UC_MEM_WRITE)
        f.reg_read = uc_reg_read_address()
        f.ctl = ctypes.cast(_uc.uc_ctl, ctypes.c_void_p).value
        f.executed = ctypes.addressof(self._executed)
        self.hook = uc_hook_add(cpu.uc, UC_HOOK_TLB_FILL, callback.address, ctypes.addressof(f), 1, 0)
        # Unicorn calls into the record, the bitmap and the library for as long as the Uc
        # lives, whoever still holds this object: tie their lifetime to the Uc's.
        weakref.finalize(cpu.uc, _keep_alive, f, self._executed, callback)
        if not cpu.read(X.UC_X86_REG_CR0) & CR0_PG:
            self._use(TLB_VIRTUAL)

    # -- a technique's MMU ---------------------------------------------------------------
    def use_shadow(self, memory, hflags_address: int, cr0: int, cr3: int, cr4: int, alias_base: int,
                   notify, spaces: int, tables: int) -> None:
        """From now on translate here through cached shadow page tables of the guest's tables,
        against the virtual CR0/CR3/CR4 the monitor keeps (``set_registers``), for a guest whose
        real CPU runs with paging off (trap). ``memory``: the guest's RAM (its P2M),
        ``hflags_address``: where QEMU keeps the CPL. A store to a write-protected frame goes to
        ``alias_base`` + its guest-physical address, mapped here to tlbfill.c's hv_alias_write:
        a page table the shadow mirrors is written there, a frame ``protect``ed by the monitor is
        ``notify(gpa, size, value)``'s to write. At most ``spaces`` address spaces are cached, with
        ``tables`` shadow page tables among them."""
        self._walk_over(memory, hflags_address)
        rights = (ctypes.c_uint8 * FRAMES_4G)()
        ctypes.memset(rights, EPT_MMIO, FRAMES_4G)          # not RAM: a device, or nothing
        ctypes.memset(rights, EPT_RWX, min(len(memory.p2m), FRAMES_4G))
        self._rights = rights
        f = self._fill
        f.ept, f.ept_frames, f.alias_base = ctypes.addressof(rights), FRAMES_4G, alias_base
        base = ctypes.addressof(f)
        f.cr0_at, f.cr3_at, f.cr4_at = (base + getattr(_Fill, name).offset for name in ("cr0", "cr3", "cr4"))
        f.cr0, f.cr3, f.cr4 = cr0 & 0xFFFFFFFF, cr3 & 0xFFFFFFFF, cr4 & 0xFFFFFFFF
        self._notify = _NOTIFY(notify)
        f.notify = ctypes.cast(self._notify, ctypes.c_void_p).value
        self._shadow_over(memory, spaces, tables)
        library = native_fill().library
        uc = self._cpu.uc
        err = _uc.uc_mmio_map(uc._uch, alias_base, len(memory.p2m) << 12,
                              ctypes.cast(library.hv_alias_read, ctypes.c_void_p).value, ctypes.addressof(f),
                              ctypes.cast(library.hv_alias_write, ctypes.c_void_p).value, ctypes.addressof(f))
        if err:
            raise OSError(f"uc_mmio_map(alias window) failed: {_uc.uc_strerror(err).decode()}")
        weakref.finalize(uc, _keep_alive, self._notify, self._shadow_arrays)
        memory.on_write = self.guest_wrote
        self._set_mode(MODE_SHADOW)

    def _shadow_over(self, memory, spaces: int, tables: int) -> None:
        library = native_fill().library
        pfns = min(len(memory.p2m), FRAMES_4G)
        for name, restype in (("hv_shadow_size", ctypes.c_size_t), ("hv_space_size", ctypes.c_size_t)):
            getattr(library, name).restype = restype
        shadows = ctypes.create_string_buffer(library.hv_shadow_size())
        space_array = ctypes.create_string_buffer(library.hv_space_size() * spaces)
        pool = (ctypes.c_uint32 * (1024 * tables))()
        free = (ctypes.c_uint32 * tables)()
        self._refs = (ctypes.c_uint16 * pfns)()
        table_refs = (ctypes.c_uint16 * pfns)()
        self._shadow_arrays = (shadows, space_array, pool, free, self._refs, table_refs)
        f = self._fill
        f.uc = self._cpu.uc._uch.value
        library.hv_shadow_init(ctypes.byref(f), shadows, space_array, ctypes.c_uint32(spaces), pool,
                               ctypes.c_uint32(tables), free, self._refs, table_refs, ctypes.c_uint32(pfns),
                               ctypes.c_void_p(memory.machine.flags_address))
        fill = ctypes.byref(f)
        wrote, invalidate, reset = library.hv_shadow_wrote, library.hv_shadow_invalidate, library.hv_shadow_reset
        wrote.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32]
        invalidate.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        refs = self._refs

        def guest_wrote(gpa: int, size: int) -> None:
            pfn = gpa >> 12
            if pfn == (gpa + size - 1) >> 12:           # the common case: one page, no page table
                if pfn < pfns and refs[pfn]:
                    wrote(fill, gpa, size)
                return
            for pfn in range(pfn, min(((gpa + size - 1) >> 12) + 1, pfns)):
                if refs[pfn]:
                    start = max(gpa, pfn << 12)
                    wrote(fill, start, min(gpa + size, (pfn + 1) << 12) - start)
        self.guest_wrote = guest_wrote
        self.invalidate = lambda linear: invalidate(fill, linear & 0xFFFFFFFF)
        self.reset_shadows = lambda: reset(fill)

    def shadow_stats(self) -> dict[str, int]:
        """What the cached shadow page tables did (``struct shadow_stats``), or {} without them."""
        if not self.native or not self._fill.sh:
            return {}
        stats = ShadowStats()
        native_fill().library.hv_shadow_stats(ctypes.byref(self._fill), ctypes.byref(stats))
        return stats.as_dict()

    def use_ept(self, memory, hflags_address: int, env_cr0: int, env_cr3: int, env_cr4: int, rights) -> None:
        """From now on walk the guest's tables here against its own (real) CR0/CR3/CR4 at these
        addresses in QEMU's CPU state, every guest-physical access checked against ``rights``
        (a ctypes byte array, EPT_* per guest frame: the EPT), for hvm."""
        self._walk_over(memory, hflags_address)
        f = self._fill
        f.cr0_at, f.cr3_at, f.cr4_at = env_cr0, env_cr3, env_cr4
        self._rights = rights
        f.ept, f.ept_frames = ctypes.addressof(rights), len(rights)
        self._set_mode(MODE_EPT)

    def _walk_over(self, memory, hflags_address: int) -> None:
        if not self.native:
            raise OSError(f"the C TLB fill is needed to virtualize memory: {why_not(EXTENSION) or 'not loaded'}")
        f = self._fill
        f.tables_at = self._cpu.descriptor_tables_address()
        if not f.p2m:                        # (the monitor's walker may have given it already)
            self._know_memory(memory)
        f.hflags_at = hflags_address

    def _know_memory(self, memory) -> None:
        f = self._fill
        self._p2m = (ctypes.c_uint32 * len(memory.p2m))(*memory.p2m)
        f.p2m, f.pfns, f.base = ctypes.addressof(self._p2m), len(memory.p2m), memory.machine.base_address

    def walker(self, memory):
        """The C walk for the monitor's own accesses (``hv_walk``), as a ``translate(paging, linear,
        write, user)`` that returns the guest-physical address, raises GuestFault(#PF) or BusError,
        or returns None where only Python walks (PAE); None where the C library is absent."""
        if not self.native:
            return None
        loaded = native_fill()                 # (the loader keeps one symbol per library: ask it for ours)
        function = getattr(loaded.library, "hv_walk", None) if loaded is not None else None
        if function is None:
            return None
        if not self._fill.p2m:
            self._know_memory(memory)
        walk = _WALK(ctypes.cast(function, ctypes.c_void_p).value)
        fill = ctypes.addressof(self._fill)
        out, error = ctypes.c_uint64(), ctypes.c_uint32()
        out_ref, error_ref = ctypes.byref(out), ctypes.byref(error)

        def translate(paging, linear: int, write: bool, user: bool):
            kind = walk(fill, paging.cr0 & 0xFFFFFFFF, paging.cr3 & 0xFFFFFFFF, paging.cr4 & 0xFFFFFFFF,
                        linear & 0xFFFFFFFF, int(write), int(user), out_ref, error_ref)
            if kind == 0:
                return out.value
            if kind == FAULT_PF:
                raise GuestFault(PF_VECTOR, error.value, cr2=linear & 0xFFFFFFFF,
                                 why=f"page fault at {linear & 0xFFFFFFFF:#010x}")
            if kind in (FAULT_BUS, FAULT_EPT):
                raise BusError(out.value, 4)
            return None
        return translate

    def _set_mode(self, mode: int) -> None:
        self._fill.mode = mode
        self._fill.paging = 0
        if not self.virtual:
            self._use(TLB_VIRTUAL)
        self.flush()

    def protect(self, pfn: int, on: bool) -> None:
        """SHADOW: stores to guest frame ``pfn`` go to the alias (the monitor performs them) while
        ``on``; they go straight to RAM again when not."""
        rights = self._rights
        rights[pfn] = (rights[pfn] & ~EPT_W) if on else (rights[pfn] | EPT_W)
        self.flush()

    def protect_code(self, pfn: int, on: bool) -> None:
        """SHADOW: a store to guest frame ``pfn`` is refused before it happens (FAULT_CODE) while
        ``on``: translated code was read from it (binary translation)."""
        rights = self._rights
        rights[pfn] = (rights[pfn] | EPT_CODE) if on else (rights[pfn] & ~EPT_CODE)
        self.flush()

    @property
    def guest_paging(self) -> bool:
        """A walking mode, with the guest's paging on."""
        f = self._fill
        return bool(self.native and f.mode != MODE_IDENTITY and f.cr0_at
                    and ctypes.c_uint32.from_address(f.cr0_at).value & CR0_PG)

    @property
    def mode(self) -> int:
        return self._fill.mode if self.native else MODE_IDENTITY

    def set_registers(self, cr0: int, cr3: int, cr4: int) -> None:
        """The virtual control registers changed (trap emulated a mov to CR0/CR3/CR4): a TLB
        entry made under the old ones must not be used (as the CPU flushes its TLB there)."""
        f = self._fill
        f.cr0, f.cr3, f.cr4 = cr0 & 0xFFFFFFFF, cr3 & 0xFFFFFFFF, cr4 & 0xFFFFFFFF
        self.flush()

    def flush(self) -> None:
        """Drop every TLB entry (a CR3 load, invlpg): later fills refill it, from the shadow where
        it can answer."""
        err = _uc.uc_ctl(self._cpu.uc._uch, CTL_TLB_FLUSH)
        if err:
            raise OSError(f"uc_ctl(TLB flush) failed: {_uc.uc_strerror(err).decode()}")

    @property
    def hidden_faults(self) -> int:
        """Hidden faults so far (SHADOW): fills the cached shadow could not serve, which walked the
        guest's tables and filled it; as deterministic as the guest."""
        return self._fill.hidden_faults if self.native else 0

    # -- the slice loop's side -------------------------------------------------------------
    def after_run(self, error: Exception | None) -> "bool | TranslationFault":
        """Called after every ``emu_start``: True when it failed only because the guest turned
        paging on under the identity fill; the walker is the CPU's now, and the caller runs
        again from EIP. A ``TranslationFault`` when a walking mode refused a fill (EIP on the
        instruction). Otherwise (False) it returns to the C fill if paging is off again."""
        if self.native and self._fill.mode != MODE_IDENTITY:
            return self._refused(error)
        if self.virtual:
            if error is None or not self._fill.paging:
                return False
            self._fill.paging = 0
            self._use(TLB_CPU)
            return getattr(error, "errno", None) == UC_ERR_EXCEPTION
        if self.native and not self._cpu.read(X.UC_X86_REG_CR0) & CR0_PG:
            self._use(TLB_VIRTUAL)
        return False

    def _refused(self, error: Exception | None) -> "bool | TranslationFault":
        f = self._fill
        kind, f.fault = f.fault, FAULT_NONE
        if error is None or kind == FAULT_NONE or getattr(error, "errno", None) != UC_ERR_EXCEPTION:
            return False
        linear = self._cpu.invalid_address()
        gpa = f.guest_physical if kind in (FAULT_EPT, FAULT_BUS, FAULT_CODE) else None
        if gpa is not None and f.qualification & EPT_TRANSLATION:
            gpa |= linear & 0xFFF       # the fill is told the page; the access's own offset is CR2's
        return TranslationFault(kind, linear, f.error_code, f.qualification, gpa)

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
