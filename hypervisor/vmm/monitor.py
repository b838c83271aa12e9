"""The monitor every technique shares: hooks in, one run loop, exits out.

A technique decides two things only: *how control reaches the monitor* (which hooks
fire, what the CPU's privilege is) and *which CPU state is virtual*. Everything else
lives here, once:

* the **run loop**: run the guest in slices of exactly counted instructions, stop at
  the next virtual-timer deadline, inject interrupts the (virtual) CPU accepts, skip
  virtual time forward while the guest idles in ``hlt``, stop a runaway guest at its
  instruction budget;
* **port I/O** to the device bus (one hook, any CPL, IOPL checked by us because
  Unicorn does not);
* **event delivery** through the guest's IDT, with #DF and triple-fault escalation;
* the **exit record**: every exit is counted by reason, and traced if asked.

Virtual time: the guest's CPU runs at one instruction per nanosecond of virtual time.
Instruction counts are exact (see ``Cpu.executed``), so the same run twice sees the
timer fire at the same instruction: deterministic, unlike wall-clock time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from unicorn import UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR, UcError
from unicorn.x86_const import UC_X86_INS_IN, UC_X86_INS_OUT

from ..machine.cpu import EAX, EIP, ESP, GPR_BY_NAME
from ..machine.interrupts import (EXCEPTION_NAMES, GP, NP, SS_FAULT, TS, VECTORS_WITH_ERROR_CODE,
                                  CpuFrame, EventKind, TripleFault,
                                  deliver_with_escalation)
from ..machine.pc import PC
from .decode import MAX_INSN, Instruction, decode
from .exits import ExitReason, ExitStats
from .trace import ExitRecord, Trace

NS_PER_INSTRUCTION = 1
UNTIL_NEVER = 1 << 40          # an end address EIP never reaches: slices end by count
# While an interrupt waits on an IF the monitor cannot see change (native: sti runs on the
# CPU), the loop looks again after POLL_FIRST instructions, doubling up to POLL_MAX: quick
# after a short cli section, cheap during a long one (each look is an emu_start).
POLL_FIRST, POLL_MAX = 1_000, 1_000_000
SEGMENT_NAMES = ("ds", "es", "fs", "gs", "ss")


@dataclass
class RunResult:
    technique: str
    console: bytes
    exit_code: int | None
    halted_reason: str
    instructions: int
    exits: dict[str, int]
    wall_s: float
    virtual_ns: int
    trace: list = field(default_factory=list)

    def as_json(self) -> dict:
        return {"console": self.console.decode("latin-1"), "exit_code": self.exit_code,
                "technique": self.technique, "halted_reason": self.halted_reason,
                "instructions": self.instructions, "exits": self.exits,
                "wall_s": round(self.wall_s, 6), "virtual_ns": self.virtual_ns}


class Monitor:
    """Base of every technique. Subclasses override the ``technique hooks`` section."""

    name = "monitor"
    description = ""
    # True where every change of the guest's IF reaches the monitor (a trap), so it never polls.
    sees_interrupt_flag = False

    def __init__(self, pc: PC, trace: Trace | None = None, max_instructions: int = 500_000_000):
        self.pc = pc
        self.cpu = pc.cpu
        self.trace = trace or Trace()
        self.stats = ExitStats()
        self.max_instructions = max_instructions
        self.instructions = 0            # guest instructions executed
        self.stub_entries = 0            # monitor-stub instructions queued, not guest work
        self.idle = False                # the guest is in hlt, waiting for an interrupt
        self.wants_injection = False     # a hook saw an interrupt become deliverable
        self.single_step = False         # run one instruction before injecting (sti shadow)
        self.io_fault_at: int | None = None  # an in/out refused for IOPL, to fault once stopped
        self._poll_slice = POLL_FIRST
        self._slice_budget = 0
        uc = self.cpu.uc
        uc.hook_add(UC_HOOK_INTR, self._hook_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._hook_invalid)
        uc.hook_add(UC_HOOK_INSN, self._hook_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._hook_out, None, 1, 0, UC_X86_INS_OUT)
        pic = pc.devices.pic
        self._pic_pending = pic.has_interrupt

    # == technique hooks =================================================================
    def boot(self) -> None:
        """Put the CPU into the state the guest starts in under this technique."""

    def interrupts_enabled(self) -> bool:
        """The IF the guest believes in."""
        raise NotImplementedError

    def current_frame(self, eip: int) -> CpuFrame:
        """The guest's (virtual) CS, EFLAGS, SS:ESP with ``eip`` as the return address."""
        raise NotImplementedError

    def delivery_view(self):
        """The DeliveryView (tables, CPL) through which guest events are delivered."""
        raise NotImplementedError

    def enter_handler(self, frame: CpuFrame, handler_cpl: int) -> None:
        """Load the CPU with a delivered frame (mapping virtual selectors to real ones)."""
        raise NotImplementedError

    def io_permitted(self) -> bool:
        raise NotImplementedError

    def on_fault(self, vector: int, eip: int) -> None:
        """A fault or trap the CPU raised (not ``int n``): by default reflect it to the guest."""
        self.reflect(vector, eip, EventKind.EXCEPTION, self.error_code_for(vector, eip))

    def on_software_interrupt(self, vector: int, next_eip: int, length: int) -> None:
        self.reflect(vector, next_eip, EventKind.SOFTWARE, None, fault_eip=next_eip - length)

    def on_halt_return(self, eip: int) -> None:
        """``emu_start`` came back early with nothing asked of it: the guest ran ``hlt``."""
        self.halt(eip)

    # == the run loop ====================================================================
    def run(self) -> RunResult:
        started = time.perf_counter()
        pc, cpu = self.pc, self.cpu
        pit, pic = pc.devices.pit, pc.devices.pic
        self.boot()
        while pc.outcome.halted_reason is None:
            pit.update()
            if self._pic_pending() and self.interrupts_enabled() and not self.single_step:
                self.inject_external(pic.acknowledge())
            if self.idle:
                if not self._wait_for_interrupt():
                    break
                continue
            budget = self.max_instructions - self.instructions
            if budget <= 0:
                pc.outcome.halted_reason = (f"runaway: stopped at --max-instructions "
                                            f"{self.max_instructions} (EIP {cpu.read(EIP):#010x})")
                break
            deadline = pit.next_event_ns()
            if deadline is not None:
                budget = min(budget, max(1, -(-(deadline - pc.clock.now) // NS_PER_INSTRUCTION)))
            if self._pic_pending() and not self.sees_interrupt_flag:
                budget = min(budget, self._poll_slice)
                self._poll_slice = min(2 * self._poll_slice, POLL_MAX)
            else:
                self._poll_slice = POLL_FIRST
            if self.single_step:
                budget = 1
            self._run_slice(budget)
        pc.outcome.halted_reason = pc.outcome.halted_reason or "stopped"
        return RunResult(self.name, bytes(pc.outcome.console), pc.outcome.exit_code,
                         pc.outcome.halted_reason, self.instructions, self.stats.as_dict(),
                         time.perf_counter() - started, pc.clock.now,
                         [r.as_json() for r in self.trace.records])

    def _run_slice(self, budget: int) -> None:
        pc, cpu = self.pc, self.cpu
        pc.stop_requested = None
        self.wants_injection = False
        was_single = self.single_step
        eip = cpu.read(EIP)
        self._slice_budget = budget
        try:
            cpu.uc.emu_start(eip, UNTIL_NEVER, count=budget)
        except UcError as e:
            self._account(budget)
            self.guest_crash(f"{e} at EIP {cpu.read(EIP):#010x}")
            return
        executed = self._account(budget)
        if was_single:
            self.single_step = False
        if self.io_fault_at is not None:
            self._raise_io_fault()
            return
        if pc.stop_requested or self.wants_injection or self.idle or was_single:
            return
        if executed < budget:
            self.on_halt_return(cpu.read(EIP))

    def _account(self, budget: int) -> int:
        """Add the slice's guest instructions to the count and the virtual clock.

        The monitor's own stub instructions (an ``iretd`` that enters the guest) ran on
        the same counter; they are not the guest's work, so they are taken off.
        """
        executed = self.cpu.executed(budget)
        self._slice_budget = 0
        stubs = self.stub_entries - (1 if self.stub_pending() else 0)
        self.stub_entries -= stubs
        guest = max(0, executed - stubs)
        self.instructions += guest
        self.pc.clock.advance(guest * NS_PER_INSTRUCTION)
        return executed

    def stub_pending(self) -> bool:
        """True when the CPU is parked on a monitor stub that has not run yet."""
        return False

    def _wait_for_interrupt(self) -> bool:
        """The guest is halted: jump virtual time to the next event, or end the run."""
        pc = self.pc
        if self._pic_pending() and self.interrupts_enabled():
            self.idle = False
            return True
        deadline = pc.devices.pit.next_event_ns()
        if not self.interrupts_enabled() or deadline is None:
            why = "interrupts disabled" if not self.interrupts_enabled() else "no timer armed"
            pc.outcome.halted_reason = f"halted: hlt with {why}, nothing can wake the guest"
            return False
        self.stats.add(ExitReason.IDLE)
        pc.clock.advance_to(max(deadline, pc.clock.now))
        pc.devices.pit.update()
        return True

    # == events ==========================================================================
    def halt(self, next_eip: int) -> None:
        """The guest executed hlt; ``next_eip`` is where it resumes after the interrupt."""
        self.cpu.write(EIP, next_eip)
        if self._pic_pending() and self.interrupts_enabled():
            self.inject_external(self.pc.devices.pic.acknowledge())
            return
        self.idle = True
        self.cpu.uc.emu_stop()

    def inject_external(self, vector: int) -> None:
        self.idle = False
        eip = self.cpu.read(EIP)
        self.record(ExitReason.EXTERNAL_INTERRUPT, eip, "inject",
                    f"PIC raised vector {vector:#x}; the guest's IF is set, so it is delivered "
                    f"through the guest's IDT", qualification=f"vector={vector:#x}")
        self.deliver(vector, EventKind.EXTERNAL, None, eip)

    def reflect(self, vector: int, return_eip: int, kind: EventKind, error_code: int | None,
                fault_eip: int | None = None) -> None:
        name = EXCEPTION_NAMES.get(vector, f"vector {vector:#x}") if kind is EventKind.EXCEPTION else f"int {vector:#x}"
        self.record(ExitReason.EXCEPTION_NMI, self.cpu.read(EIP), "reflect",
                    f"{name}: delivered through the guest's own IDT",
                    qualification=f"vector={vector:#x}" + (f" error={error_code:#x}" if error_code is not None else ""))
        self.deliver(vector, kind, error_code, return_eip, fault_eip)

    def deliver(self, vector: int, kind: EventKind, error_code: int | None, return_eip: int,
                fault_eip: int | None = None) -> None:
        try:
            delivered, notes = deliver_with_escalation(self.delivery_view(), vector, kind, error_code,
                                                       self.current_frame(return_eip), fault_eip)
        except TripleFault as e:
            self.record(ExitReason.TRIPLE_FAULT, return_eip, "crash", str(e))
            self.guest_crash(f"{e} (EIP {self.cpu.read(EIP):#010x})")
            return
        for note in notes:
            self.record(ExitReason.EXCEPTION_NMI, return_eip, "escalate", note)
        self.enter_handler(delivered.frame, delivered.handler_cpl)

    def guest_crash(self, why: str) -> None:
        self.pc.request_stop(f"guest crash: {why}")

    def error_code_for(self, vector: int, eip: int) -> int | None:
        """Unicorn does not expose the error code: derive it from the faulting instruction.

        A segment-load fault (#TS, #NP, #SS, #GP) names the selector it refused; other
        faults with an error code are given 0 (#PF's bits are not computed yet).
        """
        if vector not in VECTORS_WITH_ERROR_CODE:
            return None
        insn = self.fetch(eip)
        if insn is not None and vector in (TS, NP, SS_FAULT, GP):
            selector = self._loaded_selector(insn)
            if selector is not None:
                return selector & 0xFFFC
        return 0

    def _loaded_selector(self, insn: Instruction) -> int | None:
        """The selector a segment-loading instruction loads, or None if it loads none."""
        ops, name = insn.operands, insn.mnemonic
        if name == "mov" and len(ops) == 2 and ops[0][0] == "reg" and ops[0][1] in SEGMENT_NAMES:
            return self.operand_value(ops[1], 2)
        if name == "pop" and ops and ops[0][0] == "reg" and ops[0][1] in SEGMENT_NAMES:
            return int.from_bytes(self.read_linear(self.cpu.read(ESP), 2), "little")
        if name in ("lds", "les", "lfs", "lgs", "lss") and len(ops) == 2 and ops[1][0] == "mem":
            return int.from_bytes(self.read_linear(self.effective_address(ops[1][1]) + 4, 2), "little")
        if name in ("ljmp", "lcall") and len(ops) == 2 and ops[0][0] == "imm":   # jmp sel:offset
            return ops[0][1] & 0xFFFF
        if name in ("jmp", "call", "ljmp", "lcall") and ops and ops[0][0] == "mem" and ops[0][2] == 6:
            return int.from_bytes(self.read_linear(self.effective_address(ops[0][1]) + 4, 2), "little")
        return None

    def operand_value(self, op, size: int = 4) -> int | None:
        """The value of a decoded operand (register, memory or immediate), ``size`` bytes wide."""
        kind = op[0]
        if kind == "reg":
            return self.cpu.read_named(op[1]) & ((1 << (8 * size)) - 1)
        if kind == "mem":
            return int.from_bytes(self.read_linear(self.effective_address(op[1]), size), "little")
        if kind == "imm":
            return op[1]
        return None

    # == helpers for techniques ============================================================
    def read_linear(self, address: int, length: int) -> bytes:
        raise NotImplementedError

    def fetch(self, eip: int) -> Instruction | None:
        try:
            code = self.read_linear(eip, MAX_INSN)
        except (IndexError, ValueError):
            try:
                code = self.read_linear(eip, 1)
            except (IndexError, ValueError):
                return None
        return decode(code, eip)

    def effective_address(self, mem) -> int:
        addr = mem.disp
        if mem.base:
            addr += self.cpu.read(GPR_BY_NAME[mem.base])
        if mem.index:
            addr += self.cpu.read(GPR_BY_NAME[mem.index]) * mem.scale
        return addr & 0xFFFFFFFF

    def record(self, reason: ExitReason, eip: int, handler: str, explanation: str,
               insn: Instruction | None = None, qualification: str = "") -> None:
        self.stats.add(reason)
        if self.trace.enabled:
            self.trace.add(ExitRecord(0, self.instructions_now(), eip, reason, handler, explanation,
                                      insn.raw if insn else b"", insn.text if insn else "", qualification))

    def instructions_now(self) -> int:
        """Guest instructions so far, including the running slice (for trace records)."""
        if not self._slice_budget:
            return self.instructions
        return self.instructions + self.cpu.executed(self._slice_budget)

    # == the hooks =========================================================================
    def _hook_intr(self, uc, intno: int, _):
        eip = self.cpu.read(EIP)
        length = self._software_interrupt_length(intno, eip)
        if length:
            self.on_software_interrupt(intno, eip, length)
        else:
            self.cpu.forget_fault()
            self.on_fault(intno, eip)

    def _software_interrupt_length(self, intno: int, eip: int) -> int:
        """Length of the int n / int3 / into that raised ``intno``, or 0 for a fault.

        Unicorn reports EIP after a software interrupt and on the instruction for a fault.
        """
        try:
            if intno in (3, 4) and self.read_linear(eip - 1, 1)[0] == (0xCC if intno == 3 else 0xCE):
                return 1
            return 2 if self.read_linear(eip - 2, 2) == bytes((0xCD, intno)) else 0
        except (IndexError, ValueError):
            return 0

    def _hook_invalid(self, uc, _) -> bool:
        eip = self.cpu.read(EIP)
        self.cpu.forget_fault()
        self.on_fault(6, eip)
        return True

    def _hook_in(self, uc, port: int, size: int, _) -> int:
        if not self.io_permitted():
            self._refuse_io()
            return self.cpu.read(EAX) & ((1 << (8 * size)) - 1)   # leaves AL/AX/EAX as it was
        self.stats.add(ExitReason.IO_INSTRUCTION)
        if self.trace.enabled:
            self._trace_io(port, size, None)
        return self.pc.bus.read(port, size)

    def _hook_out(self, uc, port: int, size: int, value: int, _) -> None:
        if not self.io_permitted():
            self._refuse_io()
            return
        self.stats.add(ExitReason.IO_INSTRUCTION)
        if self.trace.enabled:
            self._trace_io(port, size, value)
        self.pc.bus.write(port, size, value)
        if self._pic_pending() and self.interrupts_enabled():
            self.wants_injection = True
            uc.emu_stop()

    def _trace_io(self, port: int, size: int, value: int | None) -> None:
        eip = self.cpu.read(EIP)
        insn = self.fetch(eip)
        what = f"in from port {port:#x}" if value is None else f"out {value:#x} to port {port:#x}"
        self.trace.add(ExitRecord(0, self.instructions_now(), eip, ExitReason.IO_INSTRUCTION, "port-bus",
                                  f"{what}: the device model answers", insn.raw if insn else b"",
                                  insn.text if insn else "", f"port={port:#x} size={size}"))

    def _refuse_io(self) -> None:
        """Port I/O at CPL > IOPL is a #GP(0) on real hardware; Unicorn skips the check.

        The hook cannot redirect the CPU (Unicorn finishes the in/out and overwrites EIP),
        so it makes the instruction a no-op and stops; the loop then raises the fault.
        """
        self.io_fault_at = self.cpu.read(EIP)
        self.cpu.uc.emu_stop()

    def _raise_io_fault(self) -> None:
        eip, self.io_fault_at = self.io_fault_at, None
        insn = self.fetch(eip)
        after = self.cpu.read(EIP)
        if insn is None or after != (eip + insn.size) & 0xFFFFFFFF:
            self.guest_crash(f"VMM could not stop at the refused I/O instruction at {eip:#010x} "
                             f"(the CPU went on to {after:#010x})")
            return
        self.cpu.write(EIP, eip)
        self.on_fault(13, eip)
