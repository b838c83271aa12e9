"""Hardware-assisted virtualization, modelled on Intel VT-x: the third answer to x86.

Trap-and-emulate fails on x86 because a deprivileged kernel can *see* that it is
deprivileged: seventeen sensitive instructions do not trap (hypervisor/vmm/vmcs.py tells the
story). VT-x stops deprivileging. The guest kernel keeps ring 0 in *VMX non-root operation*,
so ``pushf``, ``sgdt``, ``smsw`` and ``mov ax, cs`` show it exactly what the bare machine
would, and a VMCS, not the ring, decides what leaves the guest. So under ``hvm`` every guest
runs as under ``native`` (Unicorn executes it at its own ring 0, with its own GDT, IDT and
control registers) and what differs is the accounting of what would exit, and memory:

* **The VMCS** (``vmm/vmcs.py``) holds the controls in force, set here as KVM sets them for
  an EPT guest: external interrupts and NMIs exit (the monitor owns the PIC and APICs and
  injects through the VM-entry interruption-information field); HLT exits; every port
  exits (every device is the monitor's model: both I/O bitmaps all ones); CPUID always
  exits; interrupt-window exiting is set while an interrupt waits for IF; the exception
  bitmap has only #MC, so the guest's own faults are delivered by the (virtual) hardware
  through its IDT without an exit. ``--json`` prints the controls; ``--trace`` each exit
  with its SDM reason number and its qualification in the SDM's layout.
* **EPT** (``memory/ept.py``): guest-physical to machine under the monitor's control. The
  guest's own page tables and CR3 are walked in the C TLB fill, and every guest-physical
  access, the walk's included, is checked against the EPT's rights. An access to a page a
  device decodes is an EPT violation in VT-x terms (the MMIO exit, traced as one, with its
  qualification); an access to memory that is not the guest's is an EPT violation that ends
  the run; a write to a page write-protected for dirty logging is an EPT violation the
  monitor absorbs (``Ept.start_dirty_log``).

* **Instructions that exit** besides CPUID and HLT: invlpg (INVLPG exiting, which KVM leaves off
  under EPT; here the fill hands Unicorn 4 KiB pieces of a 4 MiB page, which only the monitor
  can drop together) and the instructions that switch tasks (far jmp/call to a TSS or task gate,
  iret with NT: VT-x exits on every task switch). The block hook stops before them
  (``Cpu.watch_instructions``), and the monitor performs them.
* **Control registers**, as KVM sets them for an EPT guest (``_own_control_registers``): the
  guest owns CR0.TS and WP and CR4's PGE, TSD, DE, PCE, OSFXSR and OSXMMEXCPT; a mov to CR0
  or CR4, clts or lmsw that changes any other bit from its read shadow exits (CR access, 28,
  with the SDM's qualification: the CR, the access type, the register, LMSW's source and
  operand type). CR3 loads and stores do not exit (EPT follows the guest's page tables), but
  the controls are honoured if set before the guest runs. A mov *from* CR0 or CR4 never exits
  in VT-x: the guest reads its own bits and the shadow's for the host's, and as the shadow
  holds what the guest last wrote, that is the register itself: Unicorn answers.
* **MSRs** (``_intercept_msrs``): the MSR bitmaps pass SYSENTER_CS/ESP/EIP through both ways
  and the TSC for reads, as KVM does; every other RDMSR and WRMSR exits (31, 32), as do MSRs
  outside the bitmaps' two ranges.
  These exits end in the monitor performing the instruction exactly as the CPU would, faults
  included, which the CPU itself does best: the block hook stops before the instruction (a
  ``mov`` only when its bytes say it is one the controls can make exit: 0F 22 to CR0 or CR4,
  to or from CR3 under the CR3 controls), the exit is recorded with its qualification, and
  Unicorn runs it. A #GP at CPL 3 takes priority over the exit, as on
  VT-x: no exit. The read shadows are then taken from the registers (``_sync_read_shadows``).

What is not modelled: RDTSC exiting (its control exists in the VMCS but is off, as for an EPT
guest, and Unicorn runs rdtsc without a hook), CR8 (no such register in 32-bit mode), and
MOV DR exiting.
"""
from __future__ import annotations

from unicorn import UC_HOOK_INSN
from unicorn.x86_const import UC_X86_INS_CPUID

from ..errors import UnsupportedGuest
from ..machine.cpu import CR0, CR4, ECX, EFLAGS, EIP, GPR_BY_NAME, TR
from ..machine.interrupts import NMI
from ..machine.faults import BusError, GuestFault
from ..machine.taskswitch import CR0_TS, is_task_target
from ..machine.native.tlbfill import FAULT_EPT
from ..memory.ept import Ept
from ..vmm.decode import Imm, Instruction, Mem
from ..vmm.exits import Exit, ExitReason
from ..vmm.monitor import Event, EventKind
from ..vmm.vmcs import (GPR_NAMES, CrAccess, ExitInfo, InterruptionType, MC, Vmcs, cr_access_qualification,
                        decode_ept_violation, describe, ept_violation_qualification, io_qualification)
from .native import Native

_STRING_IO = frozenset({"insb", "insw", "insd", "outsb", "outsw", "outsd"})
_CR_ACCESS = frozenset({"mov", "clts", "lmsw"})
_MSR_ACCESS = frozenset({"rdmsr", "wrmsr"})
_WATCHED = frozenset({"invlpg", "ljmp", "lcall", "jmp far", "call far", "iret", "iretd"}) | _CR_ACCESS | _MSR_ACCESS
# Legacy prefixes a 32-bit instruction may carry before its opcode.
_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_MOV_FROM_CR, _MOV_TO_CR, _CLTS = 0x20, 0x22, 0x06      # the second byte of 0F 20 /r, 0F 22 /r, 0F 06

# The bits KVM lets an EPT guest own (arch/x86/kvm/kvm_cache_regs.h, KVM_POSSIBLE_CR0_GUEST_BITS and
# KVM_POSSIBLE_CR4_GUEST_BITS, as vmx.c narrows them): its writes of these never exit.
CR0_WP = 1 << 16
CR0_GUEST_OWNED = CR0_TS | CR0_WP
CR4_TSD, CR4_DE, CR4_PGE, CR4_PCE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 2, 1 << 3, 1 << 7, 1 << 8, 1 << 9, 1 << 10
CR4_GUEST_OWNED = CR4_TSD | CR4_DE | CR4_PGE | CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT
# The MSRs KVM passes through to every guest (vmx_vcpu_create): SYSENTER's three both ways, the
# TSC for reads. Every other RDMSR and WRMSR exits.
IA32_TIME_STAMP_COUNTER = 0x10
IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
EFLAGS_NT = 1 << 14
# Task-switch exit qualification (SDM Table 27-2): the source in bits 31:30.
_SWITCH_SOURCE = {"call": 0, "iret": 1, "jmp": 2}


class Hvm(Native):
    name = "hvm"
    description = "hardware-assisted (VT-x model): the guest keeps ring 0, a VMCS decides what exits, EPT maps its memory"
    mmio_exit = ExitReason.EPT_VIOLATION
    every_exception_exits = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.pc.tlb.native:
            raise UnsupportedGuest("hvm's EPT is the C TLB fill (machine/native/tlbfill.c), which is not in use "
                                   "here (not built, or HVSIM_TLB=cpu); run the guest under native or trap")
        self.vmcs = Vmcs()
        self.injected = 0                      # VM entries that delivered an event
        c = self.vmcs.controls
        c.external_interrupt_exiting = c.nmi_exiting = c.virtual_nmis = True
        c.hlt_exiting = True
        c.use_io_bitmaps = True
        c.set_io_exiting(0, 0x10000)
        self._own_control_registers(c)
        self._intercept_msrs(c)
        c.activate_secondary_controls = c.enable_ept = c.unrestricted_guest = True
        c.exception_bitmap = 1 << MC
        pc = self.pc
        self.ept = Ept(pc.memory.size >> 12)
        for base, size, *_ in pc.mmio.ranges():
            self.ept.map_mmio(base, size)
        self.handlers[ExitReason.EPT_VIOLATION] = self.handle_ept_violation
        self.handlers[ExitReason.INVLPG] = self.handle_invlpg
        self.handlers[ExitReason.TASK_SWITCH] = self.handle_task_switch
        # INVLPG exits: the fill hands Unicorn 4 KiB entries only, so an invlpg in a 4 MiB page
        # must drop them all, which only the monitor can do. Task switches: Unicorn's own
        # switch loses the new task's EIP when a TLB fill happens inside it (the fill restores
        # EIP to the instruction), so the machine's switch (machine/taskswitch.py) makes them.
        c.invlpg_exiting = True
        self.cpu.watch_instructions(_WATCHED, self._watch, when_nt=frozenset({"iret", "iretd"}),
                                    narrowed={"mov": self._cr_move_may_exit})
        self.cpu.uc.hook_add(UC_HOOK_INSN, self._hook_cpuid, None, 1, 0, UC_X86_INS_CPUID)

    @staticmethod
    def _own_control_registers(c) -> None:
        """CR0 and CR4 as KVM sets them for an EPT guest: the guest owns the bits whose change
        needs nothing of the monitor — CR0.TS (KVM loads the guest's FPU state eagerly, so
        TS is the guest's business), CR0.WP (EPT, not a shadow, enforces the guest's page
        protections) and CR4's PGE, TSD, DE, PCE, OSFXSR, OSXMMEXCPT — and the host owns the
        rest, paging and protection first. KVM would also give the guest CR4.PVI and
        FSGSBASE, but only where CPUID offers them, and qemu32 offers neither (VME, FSGSBASE).
        CR3 loads and stores do not exit: EPT, not a shadow, follows the guest's page tables."""
        c.cr0_guest_host_mask = ~CR0_GUEST_OWNED & 0xFFFFFFFF
        c.cr4_guest_host_mask = ~CR4_GUEST_OWNED & 0xFFFFFFFF
        c.cr3_load_exiting = c.cr3_store_exiting = False

    @staticmethod
    def _intercept_msrs(c) -> None:
        """MSR bitmaps as KVM fills them: every MSR they cover exits but the few passed through."""
        c.use_msr_bitmaps = True
        c.msr_bitmaps[:] = b"\xff" * len(c.msr_bitmaps)
        for msr in (IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP):
            c.set_msr_exiting(msr, read=False, write=False)
        c.set_msr_exiting(IA32_TIME_STAMP_COUNTER, read=False, write=True)

    def boot(self) -> None:
        super().boot()
        cpu, pc = self.cpu, self.pc
        pc.tlb.use_ept(pc.memory, cpu.hflags_address, cpu.control_register_address(0),
                       cpu.control_register_address(3), cpu.control_register_address(4), self.ept.rights)
        self.ept.on_change = pc.tlb.flush
        self._sync_read_shadows()

    def details(self) -> dict:
        self._sync_read_shadows()
        return {"vmcs": self.vmcs.controls.as_json(), "vm_entries_with_injection": self.injected}

    def _sync_read_shadows(self) -> None:
        """The read shadows are what the guest last wrote to CR0 and CR4, as KVM writes them after
        each CR write it performs. Here the CPU performs every write (the instruction runs on it
        after its exit, faults and all), so what the guest last wrote is what the registers
        hold, read back before the VMCS is next asked: no write that faulted leaks into them."""
        c = self.vmcs.controls
        c.cr0_read_shadow = self.cpu.read(CR0) & 0xFFFFFFFF
        c.cr4_read_shadow = self.cpu.read(CR4) & 0xFFFFFFFF

    # -- VM entry with event injection -----------------------------------------------------------
    def inject(self, event: Event) -> None:
        """An interrupt or NMI the monitor delivers after an exit goes in through the VM-entry
        interruption-information field, with VM entry's checks (``Vmcs.inject``); the guest's own
        faults, which did not exit, are delivered by the (virtual) CPU directly."""
        if event.kind is EventKind.EXTERNAL:
            vmcs = self.vmcs
            vmcs.guest.cr0 = self.cpu.read(CR0)
            vmcs.inject(event.vector, InterruptionType.NMI if event.vector == NMI else
                        InterruptionType.EXTERNAL_INTERRUPT)
            taken = vmcs.take_injection()          # the VM entry that follows
            self.injected += 1
            event = Event(taken.vector, EventKind.EXTERNAL, None, event.return_eip)
        super().inject(event)

    # -- what exits ---------------------------------------------------------------------------
    def watch_interrupt_window(self) -> bool:
        """An interrupt waits for the guest's IF: interrupt-window exiting, for this slice."""
        watching = super().watch_interrupt_window()
        self.vmcs.controls.interrupt_window_exiting = watching
        return watching

    def after_slice(self, ran: int) -> None:
        super().after_slice(ran)
        self.vmcs.controls.interrupt_window_exiting = False

    def exception_exits(self, event: Event) -> bool:
        if event.kind is EventKind.SOFTWARE:
            return False                    # int n is delivered in the guest; only the bitmap's vectors exit
        return self.vmcs.controls.exits_on_exception(event.vector, event.error_code)

    def _hook_cpuid(self, uc, _) -> int:
        """CPUID always exits under VT-x: counted and traced; the values are the CPU model's
        (qemu32), as the monitor would return them."""
        if self.trace.enabled:
            eip = self.cpu.read(EIP)
            self.record(ExitReason.CPUID, eip, "cpuid", "CPUID exits unconditionally under VT-x; the monitor "
                        "answers with the CPU model every technique shows", self.fetch(eip))
        else:
            self.stats.add(ExitReason.CPUID)
        return 0                            # Unicorn then runs CPUID with the qemu32 model

    def describe_io(self, port: int, size: int, read: bool, insn: Instruction | None) -> str:
        string = insn is not None and insn.mnemonic.split()[-1] in _STRING_IO
        rep = insn is not None and insn.mnemonic.startswith("rep")
        immediate = insn is not None and any(isinstance(op, Imm) for op in insn.operands)
        q = io_qualification(port, size, read, string, rep, immediate)
        return f"qualification={q:#x} ({describe(ExitInfo(ExitReason.IO_INSTRUCTION, q))})"

    def describe_mmio(self, address: int, size: int, write: bool) -> str:
        q = ept_violation_qualification(read=not write, write=write, fetch=False, readable=False, writable=False,
                                        executable=False, linear_valid=True, linear_is_translation=True)
        info = ExitInfo(ExitReason.EPT_VIOLATION, q, guest_physical_address=address)
        return f"qualification={q:#x} gpa={address:#x} size={size} ({describe(info)}: a device's page)"

    # -- instructions that exit: invlpg, the ones that switch tasks, CR and MSR accesses ----------
    def _watch(self, eip: int) -> bool:
        """Does the instruction at ``eip`` exit to a handler (the CPU stopped before it)? A CR or
        MSR access that exits is recorded here and then run by the CPU (``_exit_in_place``)."""
        self.exit_began()
        insn = self.fetch(eip)
        if insn is None:
            return False
        if insn.mnemonic in _CR_ACCESS or insn.mnemonic in _MSR_ACCESS:
            self._exit_in_place(insn)
            return False
        source, selector = self._task_switch(insn)
        if insn.mnemonic == "invlpg":
            return True
        if source == "iret":
            return bool(self.cpu.read(EFLAGS) & EFLAGS_NT)
        return selector is not None and is_task_target(self.delivery_view(), selector)

    def _cr_move_may_exit(self, raw: bytes) -> bool:
        """The block hook's test for a ``mov``: is it one the VMCS can make exit? A mov to CR0 or
        CR4 (by the guest/host masks), to CR3 under CR3-load exiting, from CR3 under CR3-store
        exiting; never a mov from CR0 or CR4, whose reads VT-x answers from the read shadow
        without an exit. Asked once per block, when the block is first seen: set the CR3
        controls before the guest runs."""
        op = _opcode(raw)
        if len(op) < 3 or op[0] != 0x0F or op[1] not in (_MOV_TO_CR, _MOV_FROM_CR):
            return False
        cr, c = op[2] >> 3 & 7, self.vmcs.controls
        if op[1] == _MOV_TO_CR:
            return cr in (0, 4) or cr == 3 and c.cr3_load_exiting
        return cr == 3 and c.cr3_store_exiting

    def _exit_in_place(self, insn: Instruction) -> None:
        """A CR or MSR access the VMCS makes exit: the exit is recorded (stats, trace, the VMCS's
        exit information) and the monitor performs the access by letting the CPU run the
        instruction, which gives exactly its architectural effect, faults included (a #GP for
        a reserved CR bit is delivered in the guest, as KVM injects it after the exit).
        Faults that take priority over the exit (#GP above CPL 0; a fault reading LMSW's memory
        operand) come first: no exit then."""
        if self.cpu.cpl != 0:
            return
        info = self._msr_exit(insn) if insn.mnemonic in _MSR_ACCESS else self._cr_exit(insn)
        if info is None:
            return
        self.vmcs.record_exit(info)
        if info.reason is ExitReason.CR_ACCESS:
            detail, why = describe(info), "a CR access the VMCS intercepts (a host-owned bit, or a CR3 control)"
        else:
            detail = f"{insn.mnemonic} of MSR {self.cpu.read(ECX):#x}, in ECX"
            why = "an MSR the MSR bitmaps intercept (or outside their ranges)"
        self.record(info.reason, insn.address, "performed", f"{why}: the exit is taken and the CPU performs it",
                    insn, qualification=f"qualification={info.qualification:#x} ({detail})")

    def _cr_exit(self, insn: Instruction) -> ExitInfo | None:
        """The VM exit a mov to/from CR, clts or lmsw takes, with its qualification (SDM Table
        27-3), or None where the VMCS keeps it in the guest."""
        self._sync_read_shadows()
        c, op = self.vmcs.controls, _opcode(insn.raw)
        linear = None
        if insn.mnemonic == "clts":
            if not c.exits_on_clts():
                return None
            q = cr_access_qualification(0, CrAccess.CLTS, None)
        elif insn.mnemonic == "lmsw":
            source = insn.operands[0]
            try:
                value = self.operand_value(source, 2)
                linear = self.effective_address(source) if isinstance(source, Mem) else None
            except (GuestFault, BusError):
                return None                 # the CPU raises the fault itself, before any exit
            if not c.exits_on_lmsw(value):
                return None
            q = cr_access_qualification(0, CrAccess.LMSW, None, value, isinstance(source, Mem))
        else:
            cr, gpr = op[2] >> 3 & 7, op[2] & 7
            if op[1] == _MOV_TO_CR:
                if not c.exits_on_cr_write(cr, self.cpu.read(GPR_BY_NAME[GPR_NAMES[gpr]]) & 0xFFFFFFFF):
                    return None
                q = cr_access_qualification(cr, CrAccess.MOV_TO_CR, gpr)
            else:
                if not c.exits_on_cr_read(cr):
                    return None
                q = cr_access_qualification(cr, CrAccess.MOV_FROM_CR, gpr)
        return ExitInfo(ExitReason.CR_ACCESS, q, guest_linear_address=linear, instruction_length=insn.size)

    def _msr_exit(self, insn: Instruction) -> ExitInfo | None:
        """RDMSR or WRMSR of the MSR in ECX: an exit (no qualification) where the bitmaps say so."""
        write = insn.mnemonic == "wrmsr"
        if not self.vmcs.controls.exits_on_msr(self.cpu.read(ECX) & 0xFFFFFFFF, write):
            return None
        return ExitInfo(ExitReason.WRMSR if write else ExitReason.RDMSR, instruction_length=insn.size)

    def _task_switch(self, insn: Instruction) -> tuple[str | None, int | None]:
        """(jmp/call/iret, the selector it names) for an instruction that may switch tasks."""
        name = insn.mnemonic.split()[-1]
        if name in ("iret", "iretd"):
            return "iret", None
        source = {"ljmp": "jmp", "lcall": "call", "jmp": "jmp", "call": "call"}.get(name)
        if source is None or not insn.operands:
            return None, None
        op = insn.operands[0]
        if isinstance(op, Imm):
            return source, op.value & 0xFFFF
        if isinstance(op, Mem) and op.size == 6:
            try:
                return source, int.from_bytes(self.read_linear(self.effective_address(op) + 4, 2), "little")
            except (GuestFault, BusError):
                return None, None          # the CPU raises the fault itself
        return None, None

    def watched_exit(self, eip: int, length: int) -> Exit:
        insn = self.fetch(eip)
        if insn is not None and insn.mnemonic == "invlpg":
            return Exit(ExitReason.INVLPG, eip, length)
        return Exit(ExitReason.TASK_SWITCH, eip, length)

    def handle_invlpg(self, exit: Exit) -> None:
        """INVLPG exiting: drop the translations of the page (all of them: Unicorn's TLB is
        flushed whole) and step over the instruction."""
        insn = self.fetch(exit.eip)
        address = self.effective_address(insn.operands[0]) if insn and insn.operands else 0
        self.pc.tlb.flush()
        self.cpu.write(EIP, (exit.eip + exit.length) & 0xFFFFFFFF)
        self.record(ExitReason.INVLPG, exit.eip, "invlpg",
                    "INVLPG exiting: the monitor drops the page's translations (the whole TLB)", insn,
                    qualification=f"qualification={address:#x} (invlpg {address:#x})")

    def handle_task_switch(self, exit: Exit) -> None:
        """A far jmp or call to a TSS or task gate, or an iret with NT: VT-x exits on every task
        switch (a task switch exit, SDM 25.4.2), and the monitor makes it."""
        self.exit_began()
        insn = self.fetch(exit.eip)
        source, selector = self._task_switch(insn) if insn else (None, None)
        if self.switch_tasks(selector or 0, source or "iret", exit.eip, exit.length):
            self._switch_recorded(exit, insn, source)

    def _switch_recorded(self, exit: Exit, insn, source: str | None) -> None:
        tr = self.cpu.segment_register(TR)[0]
        q = tr | (_SWITCH_SOURCE.get(source or "iret", 1) << 30)
        self.record(ExitReason.TASK_SWITCH, exit.eip, "task-switch",
                    f"a {source} switches tasks: VT-x exits, and the monitor makes the switch", insn,
                    qualification=f"qualification={q:#x} (TSS {tr:#x}, source {source})")

    # -- EPT violations that are not a device's -------------------------------------------------
    def translation_fault(self, fault, eip: int) -> Exit:
        if fault.kind == FAULT_EPT:
            return Exit(ExitReason.EPT_VIOLATION, eip, address=fault.guest_physical, linear=fault.linear,
                        qualification=fault.qualification)
        return super().translation_fault(fault, eip)

    def handle_ept_violation(self, exit: Exit) -> None:
        """The EPT refused an access (EIP on the instruction, nothing of it done): a write the
        dirty log was waiting for is noted and the instruction runs again; anything else is
        memory the guest does not own, and the run ends with the qualification."""
        q = decode_ept_violation(exit.qualification or 0)
        info = ExitInfo(ExitReason.EPT_VIOLATION, exit.qualification or 0, guest_linear_address=exit.linear,
                        guest_physical_address=exit.address)
        qualification = f"qualification={exit.qualification:#x} ({describe(info)})"
        self.vmcs.record_exit(info)
        if q.write and exit.address is not None and self.ept.write_fault(exit.address):
            self.record(ExitReason.EPT_VIOLATION, exit.eip, "dirty-log",
                        "the first write to a page since the dirty log started: noted, and the page made "
                        "writable again", qualification=qualification)
            return
        self.record(ExitReason.EPT_VIOLATION, exit.eip, "crash",
                    "the guest touched guest-physical memory its EPT does not map", qualification=qualification)
        self.crash(f"EPT violation: {describe(info)} at EIP {exit.eip:#010x}")


def _opcode(raw: bytes) -> bytes:
    """An instruction's bytes from its opcode on (its legacy prefixes skipped)."""
    i = 0
    while i < len(raw) and raw[i] in _PREFIXES:
        i += 1
    return raw[i:]
