"""The bt technique: guest code runs only from the translation cache.

bt is trap-and-emulate (techniques/trap.py) with one change: guest code (flat 32-bit CS,
protected mode) never runs as written. Each slice enters the TC: CS's cached
base is set to the TC (above 4 GiB, where no guest access reaches) and EIP to the translation of
the guest's EIP, translated on first use. The slice leaves it on the way out: EIP is mapped back
to the guest's (a stop inside a rewritten instruction is rolled back to it, one inside the lookup
stub completed), and CS's base is the guest's again. So everything the monitor does between
slices - injecting interrupts, handling exits, reflecting faults - sees guest state only.

What stops translated code:

* a callout (``int3``): a sensitive instruction is performed on the virtual CPU
  (``vmm/sensitive.py``); any other (privileged, port I/O, a far transfer, bytes that do not
  decode) runs as one instruction at its guest address, exactly as trap runs it, so trap's
  emulator and devices answer it;
* an exit stub or a lookup miss: the target is translated (and chained, or put in its bucket);
* a fault or an ``int n`` raised by copied code: mapped to the guest instruction and handed to
  trap's handlers as an exception exit;
* everything that ends trap's slices (timer deadlines, the budget, a refused TLB fill).

Code at every ring is translated (VMware ran user code as written; here ring 3's sgdt, str or
pushf show the virtual CPU too); real mode, virtual-8086 mode and a 16-bit or non-flat CS run as
under trap. Coherence: every frame translated code was read from is write-protected
(the frame table's flag); a store to one drops the blocks read from its pages. A change of CR0,
CR3 or CR4 flushes the cache (it is keyed by linear address).
"""
from __future__ import annotations

import struct

from ...errors import UnsupportedGuest
from ...machine.cpu import CS, DS, EAX, ECX, EFLAGS, EIP, ES, ESP, FS, GS, SS
from ...machine.faults import BusError
from ...machine.interrupts import BP
from ...vmm.exits import Exit, ExitReason
from ...vmm.monitor import NS_PER_INSTRUCTION, software_interrupt_length
from ...vmm.sensitive import SENSITIVE
from ..trap import TrapAndEmulate
from ...machine.native.tlbfill import FAULT_CODE
from .cache import BLOCKS, HIT, LOOKUP, MISS, TranslationCache
from .classify import reads_segment_register
from .translator import ENTRY, translate_block

TC_BASE = 0x3_0000_0000                 # above trap's monitor memory and the shadow alias window
TC_SIZE = 8 << 20
_SEGMENTS = {"cs": CS, "ss": SS, "ds": DS, "es": ES, "fs": FS, "gs": GS}
_LOOKUP_PUSHES = {LOOKUP: 0, LOOKUP + 1: 1, LOOKUP + 2: 2}  # before push eax, pushfd, push ecx
_HIT_POPPED = {HIT + 4: 3, HIT + 5: 2, HIT + 6: 1, HIT + 7: 0}   # saved registers left above the TC address
_SAVED = (ECX, EFLAGS, EAX)             # the lookup's pushes, from the top of the stack down


class BinaryTranslation(TrapAndEmulate):
    name = "bt"
    description = ("binary translation: the guest kernel runs only from a translation cache, its sensitive "
                   "instructions rewritten into callouts (VMware's answer)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.pc.tlb.native:
            raise UnsupportedGuest("bt runs translated code above 4 GiB through the C TLB fill, which is not in "
                                   "use here; run the guest under trap")
        self._tc = self.pc.map_monitor(TC_BASE, TC_SIZE)
        self.cache = TranslationCache(self._write_tc, TC_SIZE)
        self.cpu.override_counts(self._count, TC_BASE)
        self._in_tc = False
        self._guest_cs_base = 0
        self._paging_key = None
        self._step_natively: int | None = None      # the guest EIP of a callout to run as trap runs it
        self._callout = None
        self._software = False                     # the slice ended at an int n copied from the guest
        self._code_store = False                   # the slice ended at a store to translated code
        self._code_frames: dict[int, set[int]] = {}      # guest frame -> linear pages translated from it
        self.callouts: dict[str, int] = {}
        self.handlers[ExitReason.CALLOUT] = self.handle_callout

    # -- the cache's memory ---------------------------------------------------------------------
    def _write_tc(self, at: int, data: bytes) -> None:
        self._tc[at:at + len(data)] = data
        self.cpu.uc.ctl_remove_cache(TC_BASE + at, TC_BASE + at + len(data))

    def read_code(self, address: int, length: int) -> bytes:
        if address >= TC_BASE:
            at = address - TC_BASE
            return bytes(self._tc[at:at + length])
        return super().read_code(address, length)

    def _count(self, address: int, size: int) -> int | None:
        """Guest instructions performed by the TC bytes [address, address + size): the counted
        pieces there (none in the lookup stub, the buckets or exit stubs; a callout counts when it
        is performed)."""
        if address < TC_BASE:
            return None
        at = address - TC_BASE
        found = self.cache.block_at(at)
        if found is None:
            return 0
        block, offset = found
        return sum(1 for c in block.counted if offset <= c < offset + size)

    # -- entering and leaving the TC -------------------------------------------------------------
    def _translatable(self) -> bool:
        """Code in flat 32-bit protected mode, at any ring: what bt translates. (VMware ran user
        code as written; here ring 3 is translated too, so its sgdt, str or pushf show the
        virtual CPU as the bare machine would.)"""
        if not self.vcpu.cr0 & 1 or self.cpu.read(EFLAGS) & (1 << 17):      # real mode, virtual-8086
            return False
        _, base, _, flags = self.cpu.segment_register(CS)
        return base == 0 and bool(flags & (1 << 22))          # the D bit (high dword): 32-bit code

    def _entry(self, guest_eip: int) -> int:
        tc = self.cache.lookup(guest_eip)
        if tc is not None:
            return tc
        block = translate_block(self.readable, guest_eip)
        self.stats.add(ExitReason.TRANSLATION)
        tc = self.cache.add(block)
        self._protect_code(block)
        return tc

    def _execute(self, budget: int, reason: ExitReason) -> Exit | None:
        step, self._step_natively = self._step_natively, None
        if step is not None and step == self.cpu.read(EIP):
            # A callout that runs as trap runs it: one instruction, at its guest address (unless
            # an interrupt came first: then the callout comes round again after its handler).
            return self._untranslated(1, ExitReason.MONITOR_TRAP_FLAG)
        self._check_paging()
        if not self._translatable():
            return self._untranslated(budget, reason)
        cpu = self.cpu
        self._guest_cs_base = cpu._caches[CS].base
        cpu.write(EIP, self._entry(cpu.read(EIP)))
        cpu._caches[CS].base = TC_BASE
        self._in_tc = True
        try:
            exit = super()._execute(budget, reason)
        finally:
            position = self._leave()
        return self._mapped(exit, position)

    def _untranslated(self, budget: int, reason: ExitReason) -> Exit | None:
        exit = super()._execute(budget, reason)
        if self._code_store:                    # a store to translated code: run it, here, next
            self._code_store = False
            self._step_natively = self.cpu.read(EIP)
            return None
        return exit

    def _leave(self) -> tuple[int, str]:
        """Back to guest state: EIP (and ESP) as the guest instruction's; what the TC EIP was."""
        cpu = self.cpu
        self._in_tc = False
        if cpu._caches[CS].base != TC_BASE:
            return cpu.read(EIP), "guest"       # (nothing loads CS in the TC; a safeguard)
        tc = self._callout[1] if self._callout is not None else cpu.read(EIP)   # a callout: its int3
        cpu._caches[CS].base = self._guest_cs_base
        guest, kind = self._guest_position(tc)
        cpu.write(EIP, guest)
        return guest, kind

    def _guest_position(self, tc: int) -> tuple[int, str]:
        """The guest EIP the TC address stands for, making the guest state exact there."""
        cpu = self.cpu
        if tc < BLOCKS:
            return self._finish_lookup(tc), "lookup"
        target = self.cache.exit_stub_target(tc)
        if target is not None:
            return target, "stub"
        found = self.cache.block_at(tc)
        if found is None:
            raise RuntimeError(f"EIP {tc:#x} is in the TC but in no block")
        block, offset = found
        if offset < ENTRY:
            return block.guest_eip, "entry"
        piece = block.piece_at(offset)
        if piece is None:                       # after a block's last piece: its exit stubs
            return block.guest_end, "stub"
        if not piece.boundary and piece.undo_esp:
            cpu.write(ESP, (cpu.read(ESP) + piece.undo_esp) & 0xFFFFFFFF)
        return piece.guest_eip, "piece" if piece.boundary else "rolled back"

    def _finish_lookup(self, tc: int) -> int:
        """A stop in the lookup stub, its buckets, HIT or MISS: restore what it saved, pop the
        guest target (the indirect branch is done) and return it, where the guest goes on."""
        cpu = self.cpu
        esp = cpu.read(ESP)
        ss = self.segment_base("ss")

        def word(i: int) -> int:
            return struct.unpack("<I", self.read_linear((ss + esp + 4 * i) & 0xFFFFFFFF, 4))[0]
        # Saved registers on the stack, top first, then the target (or, after HIT's store, the TC
        # address of the target's block).
        saved = _LOOKUP_PUSHES.get(tc, _HIT_POPPED.get(tc, 3))
        for i, reg in enumerate(_SAVED[3 - saved:]):
            cpu.write(reg, word(i))
        target = word(saved)
        if tc in _HIT_POPPED:
            target = self._guest_of_entry(target)
        cpu.write(ESP, (esp + 4 * (saved + 1)) & 0xFFFFFFFF)
        return target

    def _guest_of_entry(self, tc: int) -> int:
        found = self.cache.block_at(tc)
        return found[0].guest_eip if found is not None else 0

    def _mapped(self, exit: Exit | None, position: tuple[int, str]) -> Exit | None:
        """The slice's exit in guest terms; None where bt answered it itself."""
        guest, kind = position
        callout, self._callout = self._callout, None
        software, self._software = self._software, False
        if self._code_store:                    # a store to translated code: run it at its guest address
            self._code_store = False
            self._step_natively = guest
            return None
        if exit is None:
            return None
        if callout is not None:
            what, tc = callout
            if what == "stub" or what == "miss":
                if what == "miss":
                    self.cache.missed()
                return None                     # the next slice enters the target's translation
            return Exit(ExitReason.CALLOUT, guest, 0)
        if kind == "lookup" and exit.reason is ExitReason.EXCEPTION_NMI:
            return None                         # a fault of the stub's own stack use: the branch is done
        exit.eip = (guest - exit.length) & 0xFFFFFFFF if software else guest
        return exit

    # -- what stops translated code --------------------------------------------------------------
    def _hook_intr(self, uc, intno: int, _):
        if not self._in_tc:
            return super()._hook_intr(uc, intno, _)
        self.exit_began()
        cpu = self.cpu
        eip = cpu.eip
        if intno == BP:
            at = eip - 1
            if self.cache.callout_at(at) is not None:
                self._callout = ("callout", at)
            elif at == MISS:
                self._callout = ("miss", at)
            elif self.cache.exit_stub_target(at) is not None:
                self._callout = ("stub", at)
            if self._callout is not None:
                self.stop_slice(Exit(ExitReason.CALLOUT, at))
                return
        cpu.cut_block(eip)
        found = self.cache.block_at(eip)
        length = 0
        if cpu.software_interrupt_raised():
            length = software_interrupt_length(intno, bytes(self._tc[max(0, eip - 2):eip]))
        if length and found is not None:
            # int n / int3 / into copied from the guest: EIP is after it, on the jump that follows,
            # which stands for the next guest instruction (where the handler's iret comes back
            # to); the exit is ``length`` before it, as the monitor makes it for the bare CPU.
            self._software = True
            self.stop_slice(Exit(ExitReason.EXCEPTION_NMI, eip, length, intno, software=True))
            return
        error = self.error_code_for(intno)
        cpu.forget_fault()
        self.stop_slice(Exit(ExitReason.EXCEPTION_NMI, eip, 0, intno, error))

    def _dispatch_in_hook(self, exit: Exit) -> None:
        """A hook's exit (an invalid opcode, a write to a shadowed table) while translated code
        runs: taken after the slice, in guest terms, not delivered from inside the TC."""
        if self._in_tc and exit.reason is ExitReason.TABLE_WRITE:
            # The shadow GDT or LDT must follow the store before the next instruction reloads a
            # segment from it: at once, as under trap (it moves no EIP and delivers nothing).
            exit.eip = self._guest_of_tc(exit.eip)
            super()._dispatch_in_hook(exit)
        elif self._in_tc:
            self.stop_slice(exit)
        else:
            super()._dispatch_in_hook(exit)

    def _guest_of_tc(self, tc: int) -> int:
        """The guest instruction a TC address stands for (without changing any state)."""
        found = self.cache.block_at(tc)
        if found is None:
            return tc
        block, offset = found
        piece = max((p for p in block.pieces if p.offset <= offset), key=lambda p: p.offset, default=None)
        return piece.guest_eip if piece is not None else block.guest_eip

    def fast_event(self, intno: int, eip: int) -> bool:
        return False if self._in_tc else super().fast_event(intno, eip)

    def handle_callout(self, exit: Exit) -> None:
        """A callout: a sensitive instruction performed here, anything else run as trap runs it."""
        insn = self.fetch(exit.eip)
        name = insn.mnemonic.split()[-1] if insn is not None else None
        handler = SENSITIVE.get(name) if name is not None else None
        if self.instructions >= self.max_instructions:
            return                              # the budget is spent: the next slice ends the run here
        if handler is not None and (name not in ("mov", "push") or reads_segment_register(name, insn)):
            self.callouts[name] = self.callouts.get(name, 0) + 1
            done = self.guarded(exit.eip, handler, self, insn)
            if done is not None:
                reason, why = done
                self.record(ExitReason.CALLOUT, exit.eip, name, why, insn)
                self.cpu.write(EIP, (exit.eip + insn.size) & 0xFFFFFFFF)
                self.instructions += 1              # the guest instruction the callout performed
                self.pc.clock.advance(NS_PER_INSTRUCTION)
            return
        key = name or "undecodable"
        self.callouts[key] = self.callouts.get(key, 0) + 1
        self.record(ExitReason.CALLOUT, exit.eip, key, "a callout the monitor runs as one instruction at its guest "
                    "address, as trap-and-emulate runs it", insn)
        self._step_natively = exit.eip

    # -- what the sensitive callouts need (vmm/sensitive.py's Sensitive) ---------------------------
    def write_linear(self, address: int, data: bytes) -> None:
        """A callout's store: to RAM, or (smsw or sgdt to a device's page) to the device there."""
        try:
            super().write_linear(address, data)
        except BusError:
            physical = self.space.translate(address, write=True)
            if self.pc.mmio.device_at(physical) is None:
                raise
            self.pc.mmio.mmio_write(physical, len(data), int.from_bytes(data, "little"))

    def real_eflags(self) -> int:
        return self.cpu.read(EFLAGS)

    def set_real_eflags(self, value: int) -> None:
        self.cpu.write(EFLAGS, value)

    def guest_selector(self, segment: str) -> int:
        real = self.cpu.read(_SEGMENTS[segment])
        return self._virtual_selector(real) if segment in ("cs", "ss") else real

    def descriptor_raw(self, selector: int) -> int | None:
        v = self.vcpu
        if selector & 4:
            if not v.ldtr & 0xFFFC:
                return None
            base, limit = v.ldt_base, v.ldt_limit
        else:
            base, limit = v.gdt_base, v.gdt_limit
        if (selector | 7) > limit:
            return None
        raw = struct.unpack("<Q", self.read_linear((base + (selector & 0xFFF8)) & 0xFFFFFFFF, 8))[0]
        # QEMU sets a data descriptor's accessed bit when a segment load (mov, pop, lds...) takes
        # it; here the CPU loaded the shadow's (whose bit is set in advance), so a data descriptor
        # a data or stack segment register holds now is shown accessed (README, known limits:
        # one loaded before and replaced since is not).
        if (raw >> 44) & 1 and not (raw >> 43) & 1 and any(
                (self.cpu.read(_SEGMENTS[name]) & ~3) == (selector & ~3) for name in ("ds", "es", "fs", "gs", "ss")):
            raw |= 1 << 40
        return raw

    # -- coherence ---------------------------------------------------------------------------
    def _check_paging(self) -> None:
        key = (self.vcpu.cr0, self.vcpu.cr3, self.vcpu.cr4)
        if key != self._paging_key:
            if self._paging_key is not None:
                self._drop_all()
            self._paging_key = key

    def _drop_all(self) -> None:
        self.cache.flush()
        frames, self._code_frames = self._code_frames, {}
        for pfn in frames:
            self.pc.tlb.protect_code(pfn, False)

    def _protect_code(self, block) -> None:
        """Refuse stores to the frames the block was read from (tlbfill.c EPT_CODE): a store
        there stops before it happens, and ``translation_fault`` drops the block first."""
        for page in block.pages:
            pfn = self._frame_of(page << 12)
            if pfn is None or pfn >= len(self.pc.memory.p2m):
                continue                        # not RAM: nothing there can be written as code
            if pfn not in self._code_frames:
                self._code_frames[pfn] = set()
                self.pc.tlb.protect_code(pfn, True)
            self._code_frames[pfn].add(page)

    def translation_fault(self, fault, eip: int) -> Exit:
        """A store to a frame translated code was read from, refused before it happened: the
        blocks read from its pages go, the frame is open again, and the store runs as one
        instruction at its guest address (the blocks after it are translated afresh, from the
        bytes it wrote, and protect the frame again)."""
        if fault.kind != FAULT_CODE:
            return super().translation_fault(fault, eip)
        pfn = fault.guest_physical >> 12
        for page in self._code_frames.pop(pfn, ()):
            self.cache.invalidate_page(page)
        self.pc.tlb.protect_code(pfn, False)
        self._code_store = True
        # The slice counted the refused store as run (as a fault's instruction counts); it runs in
        # the next one. (The virtual clock, which cannot go back, stays that one instruction ahead.)
        self.instructions -= 1
        return Exit(ExitReason.PREEMPTION_TIMER, eip)

    def details(self) -> dict:
        details = super().details()
        details["bt"] = dict(self.cache.stats.as_dict(), callouts=dict(sorted(self.callouts.items())))
        return details

