"""The VMCS: the page of state with which VT-x decides what leaves the guest.

Popek and Goldberg (1974) proved that a machine can be virtualized by trap-and-emulate
when every *sensitive* instruction — one that reads or changes the machine's
configuration — is also *privileged*, so that it traps when the guest runs
deprivileged. The 32-bit x86 fails the test: run a guest kernel in ring 1 and
``popf`` silently drops its IF, ``smsw`` and ``sgdt`` read the real CR0 and GDTR,
``push cs`` shows ring 1 instead of 0 — seventeen such instructions (Robin and Irvine,
2000). ``trap`` deprivileges anyway and catches what it can, ``bt`` rewrites the rest,
``pv`` asks the guest to call instead.

VT-x answers the theorem by moving the line. It adds a mode, VMX non-root operation,
beside the four rings rather than below them: the guest kernel keeps ring 0, so every
instruction whose behaviour depends on the ring behaves as on the bare machine, and a
*VMCS* — not the ring — decides what traps. Each virtual CPU has one: a 4-KiB region
that VM entry loads the guest from and VM exit saves it into, in six areas:

* the guest-state area: the registers the guest runs with (``GuestState``);
* the host-state area: what the CPU reloads to land in the monitor (``HostState``);
* the VM-execution controls: what exits. A fixed set always does (CPUID, INVD, the VMX
  instructions, a triple fault); the rest by the controls here — HLT by one bit, I/O
  by port in two bitmaps, RDMSR/WRMSR by MSR number, exceptions by vector, writes to
  CR0/CR4 by *bit* through a guest/host mask, with a read shadow that the guest's
  reads of host-owned bits see instead (``VmcsControls``);
* the VM-exit and VM-entry controls, of which a software model needs only event
  injection: the interrupt or exception VM entry delivers through the guest's IDT
  (``Vmcs.inject``);
* the VM-exit information: why the guest left, as a basic exit reason and an *exit
  qualification* whose layout depends on the reason (``ExitInfo`` and the encoders).

This module is that structure as data, with the decisions the processor takes from it
written as pure functions of it, so that hypothesis can check each against the SDM's
wording. It runs nothing: the ``hvm`` technique asks it, on every candidate exit,
whether the instruction would leave non-root operation, and builds the ``ExitInfo``
the hardware would have stored.

What it leaves out, and why:

* No VMREAD/VMWRITE field encodings and no VMX capability MSRs: nothing reads this
  VMCS but the monitor. So ``as_words`` gives only the named controls' bits, not the
  reserved bits that IA32_VMX_*_CTLS would force to 1 on a real processor.
* A 32-bit guest: general-purpose registers 0-7 (EAX..EDI) only, no IA-32e fields.
* No TPR shadow, APIC virtualization, posted interrupts, VPID, PML, or the "other
  event" injection type (a pending MTF exit).
* The "unconditional" exits are answered by the technique (``exits_on_cpuid``
  documents the rule with the one it needs).

Every number below was checked against the Intel SDM, Vol. 3C, in the edition of
about 2016 mirrored at xem.github.io/minix86 (chapter 24 is the VMCS, 25 VMX non-root
operation, 26 VM entries, 27 VM exits). Current editions number the same chapters one
higher (the VM exits are chapter 28) and have added tables within them, so a table
cited here as 27-3 is best found by its title. Two VM-entry checks changed after that
edition with CET, and follow the newer rule: #CP (vector 21) delivers an error code,
and an injected error code must clear bits 31:16 (31:15 before; KVM's nested VM-entry
checks test 31:16).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..machine.cpu import CR0_PE
from ..machine.interrupts import DB, EXCEPTION_NAMES, NMI, PF, VECTORS_WITH_ERROR_CODE
from ..machine.taskswitch import CR0_TS
from .exits import ExitReason

MC, CP = 18, 21                 # #MC and #CP: the machine never raises them, VM entry names them
# The exceptions VM entry lets (and makes) an injection deliver an error code for (26.2.1.3).
INJECTED_ERROR_CODE_VECTORS = VECTORS_WITH_ERROR_CODE | {CP}
BITMAP_BYTES = 4096             # each I/O bitmap, and the four MSR bitmaps together, fill a page
PORTS_PER_BITMAP = 0x8000       # I/O bitmap A: ports 0000-7FFF; B: 8000-FFFF (24.6.4)
# The two MSR ranges the MSR bitmaps cover; an MSR in neither always exits (24.6.9, 25.1.3).
MSR_LOW = range(0x0000_0000, 0x0000_2000)
MSR_HIGH = range(0xC000_0000, 0xC000_2000)
MSR_BITMAP_BYTES = 1024         # read-low, read-high, write-low, write-high, in that order
MAX_INSTRUCTION_LENGTH = 15
# General-purpose registers as exit qualifications number them (Table 27-3): ModRM order.
GPR_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
VALID = 1 << 31                 # bit 31 of both interruption-information formats


class PinBased(enum.IntFlag):
    """Pin-based VM-execution controls: asynchronous events (SDM Table 24-5)."""
    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    PREEMPTION_TIMER = 1 << 6               # "activate VMX-preemption timer"


class PrimaryControls(enum.IntFlag):
    """Primary processor-based VM-execution controls: instructions (SDM Table 24-6)."""
    INTERRUPT_WINDOW_EXITING = 1 << 2
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryControls(enum.IntFlag):
    """Secondary processor-based VM-execution controls (SDM Table 24-7)."""
    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7


@dataclass(frozen=True)
class ControlWords:
    """The three 32-bit control fields as the processor reads them."""
    pin_based: int
    primary: int
    secondary: int


@dataclass
class VmcsControls:
    """The VM-execution controls: every exit the guest can take is decided here.

    All off is the architectural meaning of zero: nothing optional exits — except
    RDMSR and WRMSR, which all exit until "use MSR bitmaps" says which may not. The
    secondary controls are in force only while ``activate_secondary_controls`` is set:
    clear, the processor behaves as if they were all 0 (24.6.2).
    """
    # Pin-based (Table 24-5).
    external_interrupt_exiting: bool = False
    nmi_exiting: bool = False
    virtual_nmis: bool = False
    preemption_timer: bool = False
    # Primary processor-based (Table 24-6).
    interrupt_window_exiting: bool = False
    hlt_exiting: bool = False
    invlpg_exiting: bool = False
    rdtsc_exiting: bool = False
    cr3_load_exiting: bool = False
    cr3_store_exiting: bool = False
    cr8_load_exiting: bool = False
    cr8_store_exiting: bool = False
    nmi_window_exiting: bool = False
    mov_dr_exiting: bool = False
    unconditional_io_exiting: bool = False
    use_io_bitmaps: bool = False
    monitor_trap_flag: bool = False
    use_msr_bitmaps: bool = False
    activate_secondary_controls: bool = False
    # Secondary processor-based (Table 24-7).
    enable_ept: bool = False
    descriptor_table_exiting: bool = False
    enable_rdtscp: bool = False
    wbinvd_exiting: bool = False
    unrestricted_guest: bool = False
    # The exception bitmap (24.6.3): bit n set, exception n exits; for #PF, the error code
    # is first compared through the mask and match fields (25.2, exits_on_exception).
    exception_bitmap: int = 0
    pf_error_code_mask: int = 0
    pf_error_code_match: int = 0
    # Guest/host masks and read shadows (24.6.6): a mask bit set means the host owns that
    # bit of the register. CR3-target values (24.6.7): loads of these never exit.
    cr0_guest_host_mask: int = 0
    cr0_read_shadow: int = 0
    cr4_guest_host_mask: int = 0
    cr4_read_shadow: int = 0
    cr3_target_values: tuple[int, ...] = ()
    # I/O bitmaps A and B (24.6.4) and the MSR bitmaps (24.6.9): bit n of a bitmap is bit
    # n % 8 of byte n // 8, and a set bit means exit.
    io_bitmap_a: bytearray = field(default_factory=lambda: bytearray(BITMAP_BYTES), repr=False)
    io_bitmap_b: bytearray = field(default_factory=lambda: bytearray(BITMAP_BYTES), repr=False)
    msr_bitmaps: bytearray = field(default_factory=lambda: bytearray(BITMAP_BYTES), repr=False)

    # --- the control words ---------------------------------------------------------

    def _pin_based(self) -> dict[PinBased, bool]:
        return {PinBased.EXTERNAL_INTERRUPT_EXITING: self.external_interrupt_exiting,
                PinBased.NMI_EXITING: self.nmi_exiting,
                PinBased.VIRTUAL_NMIS: self.virtual_nmis,
                PinBased.PREEMPTION_TIMER: self.preemption_timer}

    def _primary(self) -> dict[PrimaryControls, bool]:
        return {PrimaryControls.INTERRUPT_WINDOW_EXITING: self.interrupt_window_exiting,
                PrimaryControls.HLT_EXITING: self.hlt_exiting,
                PrimaryControls.INVLPG_EXITING: self.invlpg_exiting,
                PrimaryControls.RDTSC_EXITING: self.rdtsc_exiting,
                PrimaryControls.CR3_LOAD_EXITING: self.cr3_load_exiting,
                PrimaryControls.CR3_STORE_EXITING: self.cr3_store_exiting,
                PrimaryControls.CR8_LOAD_EXITING: self.cr8_load_exiting,
                PrimaryControls.CR8_STORE_EXITING: self.cr8_store_exiting,
                PrimaryControls.NMI_WINDOW_EXITING: self.nmi_window_exiting,
                PrimaryControls.MOV_DR_EXITING: self.mov_dr_exiting,
                PrimaryControls.UNCONDITIONAL_IO_EXITING: self.unconditional_io_exiting,
                PrimaryControls.USE_IO_BITMAPS: self.use_io_bitmaps,
                PrimaryControls.MONITOR_TRAP_FLAG: self.monitor_trap_flag,
                PrimaryControls.USE_MSR_BITMAPS: self.use_msr_bitmaps,
                PrimaryControls.ACTIVATE_SECONDARY_CONTROLS: self.activate_secondary_controls}

    def _secondary(self) -> dict[SecondaryControls, bool]:
        return {SecondaryControls.ENABLE_EPT: self.enable_ept,
                SecondaryControls.DESCRIPTOR_TABLE_EXITING: self.descriptor_table_exiting,
                SecondaryControls.ENABLE_RDTSCP: self.enable_rdtscp,
                SecondaryControls.WBINVD_EXITING: self.wbinvd_exiting,
                SecondaryControls.UNRESTRICTED_GUEST: self.unrestricted_guest}

    def as_words(self) -> ControlWords:
        """The pin-based, primary and secondary control fields, bit for bit as the SDM lays them out."""
        return ControlWords(_pack(self._pin_based()), _pack(self._primary()), _pack(self._secondary()))

    def as_json(self) -> dict:
        """Every control by name, the words in hex, and each bitmap as the ranges that exit."""
        words = self.as_words()
        msr_reads = self.msr_bitmaps[:2 * MSR_BITMAP_BYTES]
        msr_writes = self.msr_bitmaps[2 * MSR_BITMAP_BYTES:]
        return {
            "pin_based": _by_name(self._pin_based()),
            "primary": _by_name(self._primary()),
            "secondary": _by_name(self._secondary()),
            "words": {"pin_based": _hex(words.pin_based), "primary": _hex(words.primary),
                      "secondary": _hex(words.secondary)},
            "exception_vectors": [v for v in range(32) if self.exception_bitmap >> v & 1],
            "pf_error_code_mask": _hex(self.pf_error_code_mask),
            "pf_error_code_match": _hex(self.pf_error_code_match),
            "cr0_guest_host_mask": _hex(self.cr0_guest_host_mask),
            "cr0_read_shadow": _hex(self.cr0_read_shadow),
            "cr4_guest_host_mask": _hex(self.cr4_guest_host_mask),
            "cr4_read_shadow": _hex(self.cr4_read_shadow),
            "cr3_target_values": [_hex(v) for v in self.cr3_target_values],
            # Bitmap A runs straight into B, so one scan gives ranges across 7FFF/8000.
            "io_ports_exiting": _set_bit_ranges(self.io_bitmap_a + self.io_bitmap_b, 0),
            "msr_reads_exiting": _msr_ranges(msr_reads),
            "msr_writes_exiting": _msr_ranges(msr_writes),
        }

    # --- filling the bitmaps -------------------------------------------------------

    def set_io_exiting(self, port: int, count: int = 1, exits: bool = True) -> None:
        """Make ports ``port`` .. ``port + count - 1`` exit (or stop exiting)."""
        if not (0 <= port and count >= 1 and port + count <= 0x10000):
            raise ValueError(f"ports {port:#x}+{count} are not all in 0-0xffff")
        for p in range(port, port + count):
            bitmap = self.io_bitmap_a if p < PORTS_PER_BITMAP else self.io_bitmap_b
            _set_bit(bitmap, p % PORTS_PER_BITMAP, exits)

    def set_msr_exiting(self, msr: int, *, read: bool, write: bool) -> None:
        """Choose whether RDMSR and WRMSR of ``msr`` exit; only MSRs the bitmaps cover can be chosen."""
        read_bit, write_bit = _msr_bit(msr, write=False), _msr_bit(msr, write=True)
        if read_bit is None or write_bit is None:
            raise ValueError(f"MSR {msr:#x} is outside 0-0x1fff and 0xc0000000-0xc0001fff: it always exits")
        _set_bit(self.msr_bitmaps, read_bit, read)
        _set_bit(self.msr_bitmaps, write_bit, write)

    # --- the decisions: would this leave non-root operation? ---------------------

    def _secondary_on(self, control: bool) -> bool:
        return control and self.activate_secondary_controls

    @property
    def ept_enabled(self) -> bool:
        """Guest-physical addresses go through EPT (the control is in force, not merely set)."""
        return self._secondary_on(self.enable_ept)

    @property
    def unrestricted(self) -> bool:
        """The guest may run unpaged or in real mode (the "unrestricted guest" control, in force)."""
        return self._secondary_on(self.unrestricted_guest)

    def exits_on_io(self, port: int, size: int) -> bool:
        """IN/OUT/INS/OUTS of ``size`` bytes at ``port`` (25.1.3).

        Without the bitmaps, "unconditional I/O exiting" decides for every port. With
        them, the access exits if the bit of *any* port it touches is set — a 4-byte
        ``out`` to 0x3f6 exits for a trapped 0x3f8 — and an access that wraps past FFFF
        to 0000 always exits, whatever the bits say.
        """
        if not 0 <= port <= 0xFFFF or size not in (1, 2, 4):
            raise ValueError(f"an I/O access is 1, 2 or 4 bytes at a port in 0-0xffff, not {size} at {port:#x}")
        if not self.use_io_bitmaps:
            return self.unconditional_io_exiting
        if port + size > 0x10000:
            return True
        return any(_bit(self.io_bitmap_a if p < PORTS_PER_BITMAP else self.io_bitmap_b, p % PORTS_PER_BITMAP)
                   for p in range(port, port + size))

    def exits_on_msr(self, msr: int, write: bool) -> bool:
        """RDMSR (``write`` false) or WRMSR of the MSR in ECX (25.1.3)."""
        if not self.use_msr_bitmaps:
            return True
        bit = _msr_bit(msr, write)
        return bit is None or _bit(self.msr_bitmaps, bit)

    def exits_on_exception(self, vector: int, error_code: int | None) -> bool:
        """An exception (a fault, trap or abort, or one raised by int3, into, bound, ud2) (25.2).

        ``int n`` is a software interrupt, not an exception: it never consults the
        bitmap and never comes here. A page fault is special: its error code is ANDed
        with the mask and compared with the match field; equal, bit 14 decides as for
        any vector; unequal, bit 14's meaning is reversed. So bit 14 set with mask 0 and
        match 0 exits on every #PF, and with match FFFFFFFF on none.
        """
        if not 0 <= vector <= 31:
            raise ValueError(f"vector {vector} is not an exception: the exception bitmap has 32 bits")
        selected = bool(self.exception_bitmap >> vector & 1)
        if vector != PF:
            return selected
        if error_code is None:
            raise ValueError("a page fault always has an error code")
        matches = error_code & self.pf_error_code_mask == self.pf_error_code_match
        return selected == matches

    def exits_on_cr_write(self, n: int, value: int) -> bool:
        """MOV to CRn of ``value`` (25.1.3).

        CR0 and CR4 exit iff ``value`` differs from the read shadow in a bit the host
        owns (mask bit set). The comparison is with the *shadow*, not the register: a
        guest that writes back the very value it has still exits if that value differs
        from what it was shown. CR3 exits under "CR3-load exiting" unless the value is
        one of the CR3-target values; CR8 under "CR8-load exiting".
        """
        if n == 0:
            return bool((value ^ self.cr0_read_shadow) & self.cr0_guest_host_mask)
        if n == 4:
            return bool((value ^ self.cr4_read_shadow) & self.cr4_guest_host_mask)
        if n == 3:
            return self.cr3_load_exiting and value not in self.cr3_target_values
        if n == 8:
            return self.cr8_load_exiting
        raise ValueError(f"MOV to CR{n} is not controlled by the VMCS (only CR0, CR3, CR4, CR8)")

    def exits_on_cr_read(self, n: int) -> bool:
        """MOV from CRn (25.1.3). CR0 and CR4 reads never exit: see ``guest_view_cr``."""
        if n in (0, 2, 4):
            return False
        if n == 3:
            return self.cr3_store_exiting
        if n == 8:
            return self.cr8_store_exiting
        raise ValueError(f"CR{n} does not exist")

    def guest_view_cr(self, n: int, real: int) -> int:
        """What the guest reads from CRn (MOV from CR, SMSW): its own bits, the shadow's for the host's."""
        if n == 0:
            return (real & ~self.cr0_guest_host_mask) | (self.cr0_read_shadow & self.cr0_guest_host_mask)
        if n == 4:
            return (real & ~self.cr4_guest_host_mask) | (self.cr4_read_shadow & self.cr4_guest_host_mask)
        if n in (2, 3, 8):
            return real
        raise ValueError(f"CR{n} does not exist")

    def exits_on_clts(self) -> bool:
        """CLTS exits iff CR0.TS is owned by the host and set in the shadow (25.1.3)."""
        return bool(self.cr0_guest_host_mask & self.cr0_read_shadow & CR0_TS)

    def exits_on_lmsw(self, source: int) -> bool:
        """LMSW of ``source`` (25.1.3): it writes CR0 bits 3:0 but can set PE, never clear it.

        So a host-owned PE exits only when LMSW would set it over a clear shadow; a
        host-owned MP, EM or TS exits when the source differs from the shadow there.
        """
        owned = self.cr0_guest_host_mask & 0xF
        if owned & source & CR0_PE and not self.cr0_read_shadow & CR0_PE:
            return True
        return bool((source ^ self.cr0_read_shadow) & owned & 0xE)

    def exits_on_hlt(self) -> bool:
        return self.hlt_exiting

    def exits_on_invlpg(self) -> bool:
        return self.invlpg_exiting

    def exits_on_rdtsc(self, rdtscp: bool = False) -> bool:
        """RDTSC exits under "RDTSC exiting"; RDTSCP only if "enable RDTSCP" is also in force
        (without it RDTSCP is #UD, which is the technique's to raise)."""
        if rdtscp:
            return self.rdtsc_exiting and self._secondary_on(self.enable_rdtscp)
        return self.rdtsc_exiting

    def exits_on_cpuid(self) -> bool:
        """CPUID always exits (25.1.2), as do GETSEC, INVD, XSETBV and the VMX instructions."""
        return True

    def exits_on_wbinvd(self) -> bool:
        return self._secondary_on(self.wbinvd_exiting)

    def exits_on_descriptor_table(self) -> bool:
        """LGDT, LIDT, LLDT, LTR, SGDT, SIDT, SLDT, STR — one control for all eight."""
        return self._secondary_on(self.descriptor_table_exiting)

    def exits_on_mov_dr(self) -> bool:
        return self.mov_dr_exiting


def _pack(controls: dict) -> int:
    word = 0
    for flag, on in controls.items():
        if on:
            word |= flag
    return int(word)


def _by_name(controls: dict) -> dict[str, bool]:
    return {flag.name.lower(): on for flag, on in controls.items()}


def _hex(value: int) -> str:
    return f"{value:#010x}"


def _bit(bitmap: bytes, n: int) -> bool:
    return bool(bitmap[n >> 3] >> (n & 7) & 1)


def _set_bit(bitmap: bytearray, n: int, on: bool) -> None:
    if on:
        bitmap[n >> 3] |= 1 << (n & 7)
    else:
        bitmap[n >> 3] &= ~(1 << (n & 7)) & 0xFF


def _msr_bit(msr: int, write: bool) -> int | None:
    """The MSR's bit in the MSR-bitmap page for a read or a write; None outside both ranges."""
    if msr in MSR_LOW:
        which = 0
    elif msr in MSR_HIGH:
        which = 1
    else:
        return None
    if write:
        which += 2
    return which * MSR_BITMAP_BYTES * 8 + (msr & 0x1FFF)


def _set_bit_ranges(bitmap: bytes, first: int) -> list[list[int]]:
    """The runs of set bits in ``bitmap`` (bit n standing for ``first + n``), as [low, high] pairs."""
    ranges: list[list[int]] = []
    for i, byte in enumerate(bitmap):
        for b in range(8) if byte else ():
            if byte >> b & 1:
                n = first + 8 * i + b
                if ranges and ranges[-1][1] == n - 1:
                    ranges[-1][1] = n
                else:
                    ranges.append([n, n])
    return ranges


def _msr_ranges(low_then_high: bytes) -> list[list[int]]:
    return (_set_bit_ranges(low_then_high[:MSR_BITMAP_BYTES], MSR_LOW.start)
            + _set_bit_ranges(low_then_high[MSR_BITMAP_BYTES:], MSR_HIGH.start))


# --- the VM-exit information ---------------------------------------------------------

class InterruptionType(enum.IntEnum):
    """Bits 10:8 of the interruption-information formats (Tables 24-13 and 24-15).

    1 is reserved; 7, "other event" (a pending MTF exit), is not modelled. A VMM
    injects #BP and #OF (int3, into) as software exceptions, int1 (icebp) as a
    privileged software exception, and every other exception as a hardware one.
    """
    EXTERNAL_INTERRUPT = 0
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6

    @property
    def is_software(self) -> bool:
        """Delivered for an instruction: the event's return address is past it, so its length matters."""
        return self in (InterruptionType.SOFTWARE_INTERRUPT, InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
                        InterruptionType.SOFTWARE_EXCEPTION)


@dataclass
class ExitInfo:
    """The VM-exit information fields (24.9) that the ``hvm`` technique fills in for an exit."""
    reason: ExitReason
    qualification: int = 0
    guest_linear_address: int | None = None     # LMSW from memory, INS/OUTS, most EPT violations
    guest_physical_address: int | None = None   # EPT violations and misconfigurations
    instruction_length: int = 0
    instruction_information: int | None = None  # descriptor-table, INS/OUTS and VMX instructions
    interruption_info: int | None = None        # exceptions, NMIs, external interrupts (Table 24-15)
    interruption_error_code: int | None = None  # for a hardware exception that pushed one


class CrAccess(enum.IntEnum):
    """Bits 5:4 of a control-register-access qualification (Table 27-3)."""
    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


@dataclass(frozen=True)
class CrAccessQualification:
    cr: int
    access: CrAccess
    gpr: int | None                 # MOV CR only: 0 = EAX ... 7 = EDI
    lmsw_source: int | None         # LMSW only: its 16-bit source operand
    lmsw_memory: bool               # LMSW only: the source was a memory operand


def cr_access_qualification(cr: int, access: CrAccess, gpr: int | None,
                            lmsw_source: int | None = None, lmsw_memory: bool = False) -> int:
    """Exit qualification for a control-register access.

    SDM Table 27-3, Exit Qualification for Control-Register Accesses: bits 3:0 the CR
    (0 for CLTS and LMSW), 5:4 the access type, 6 LMSW's operand type (1 = memory),
    11:8 the MOV's general-purpose register, 31:16 LMSW's source data. Only accesses
    that can exit are accepted: MOV to CR0/3/4/8, MOV from CR3/8, CLTS, LMSW.
    """
    access = CrAccess(access)
    if access in (CrAccess.MOV_TO_CR, CrAccess.MOV_FROM_CR):
        if cr not in ((0, 3, 4, 8) if access is CrAccess.MOV_TO_CR else (3, 8)):
            raise ValueError(f"{access.name.lower()} of CR{cr} never exits")
        if gpr not in range(len(GPR_NAMES)):
            raise ValueError(f"a MOV CR names a register 0-7 (EAX..EDI), not {gpr}")
        if lmsw_source is not None or lmsw_memory:
            raise ValueError("only LMSW has a source operand in the qualification")
        return cr | access << 4 | gpr << 8
    if cr != 0 or gpr is not None:
        raise ValueError(f"{access.name} always names CR0 and no register")
    if access is CrAccess.CLTS:
        if lmsw_source is not None or lmsw_memory:
            raise ValueError("only LMSW has a source operand in the qualification")
        return access << 4
    if lmsw_source is None or not 0 <= lmsw_source <= 0xFFFF:
        raise ValueError(f"LMSW's source is 16 bits, not {lmsw_source}")
    return access << 4 | int(lmsw_memory) << 6 | lmsw_source << 16


def decode_cr_access(qualification: int) -> CrAccessQualification:
    access = CrAccess(qualification >> 4 & 3)
    is_mov = access in (CrAccess.MOV_TO_CR, CrAccess.MOV_FROM_CR)
    is_lmsw = access is CrAccess.LMSW
    return CrAccessQualification(cr=qualification & 0xF, access=access,
                                 gpr=qualification >> 8 & 0xF if is_mov else None,
                                 lmsw_source=qualification >> 16 & 0xFFFF if is_lmsw else None,
                                 lmsw_memory=bool(qualification >> 6 & 1))


@dataclass(frozen=True)
class IoQualification:
    port: int
    size: int
    direction_in: bool
    string: bool
    rep: bool
    immediate: bool


def io_qualification(port: int, size: int, direction_in: bool, string: bool, rep: bool,
                     immediate: bool) -> int:
    """Exit qualification for an I/O instruction.

    SDM Table 27-5, Exit Qualification for I/O Instructions: bits 2:0 the size less one
    (0, 1 or 3), 3 the direction (1 = IN), 4 string, 5 REP prefixed, 6 the operand
    encoding (1 = immediate, 0 = DX), 31:16 the port.
    """
    if size not in (1, 2, 4) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"an I/O access is 1, 2 or 4 bytes at a port in 0-0xffff, not {size} at {port:#x}")
    if immediate and (port > 0xFF or string):
        raise ValueError("an immediate port is one byte, and string I/O always names DX")
    return ((size - 1) | int(direction_in) << 3 | int(string) << 4 | int(rep) << 5
            | int(immediate) << 6 | port << 16)


def decode_io(qualification: int) -> IoQualification:
    return IoQualification(port=qualification >> 16 & 0xFFFF, size=(qualification & 7) + 1,
                           direction_in=bool(qualification >> 3 & 1), string=bool(qualification >> 4 & 1),
                           rep=bool(qualification >> 5 & 1), immediate=bool(qualification >> 6 & 1))


@dataclass(frozen=True)
class EptViolation:
    read: bool
    write: bool
    fetch: bool
    readable: bool
    writable: bool
    executable: bool
    linear_valid: bool
    linear_is_translation: bool


def ept_violation_qualification(read: bool, write: bool, fetch: bool, readable: bool, writable: bool,
                                executable: bool, linear_valid: bool, linear_is_translation: bool) -> int:
    """Exit qualification for an EPT violation.

    SDM Table 27-7, Exit Qualification for EPT Violations: bits 0-2 the access (data
    read, data write, instruction fetch), 3-5 what the EPT entries allowed (the AND of
    their read, write and execute bits: all clear means not present), 7 whether the
    guest-linear-address field is valid, and 8 — defined only when 7 is set — whether
    the access was to the translation of that linear address (set) or to a guest
    paging-structure entry during the walk (clear).
    """
    if not (read or write or fetch):
        raise ValueError("an EPT violation is a read, a write or a fetch")
    if linear_is_translation and not linear_valid:
        raise ValueError("bit 8 is reserved (0) unless the guest-linear address is valid")
    return (int(read) | int(write) << 1 | int(fetch) << 2 | int(readable) << 3 | int(writable) << 4
            | int(executable) << 5 | int(linear_valid) << 7 | int(linear_is_translation) << 8)


def decode_ept_violation(qualification: int) -> EptViolation:
    return EptViolation(*(bool(qualification >> b & 1) for b in (0, 1, 2, 3, 4, 5, 7, 8)))


@dataclass(frozen=True)
class Interruption:
    vector: int
    kind: InterruptionType
    error_code_valid: bool


def interruption_info(vector: int, kind: InterruptionType, error_code_valid: bool) -> int:
    """An interruption-information field, valid: the VM-entry format (SDM Table 24-13) and
    the VM-exit format (Table 24-15) share bits 7:0 vector, 10:8 type, 11 error code
    delivered/valid, 31 valid. (The exit format's bit 12, NMI unblocking by IRET, is left 0.)"""
    if not 0 <= vector <= 0xFF:
        raise ValueError(f"a vector is 0-255, not {vector}")
    return vector | InterruptionType(kind) << 8 | int(error_code_valid) << 11 | VALID


def decode_interruption_info(info: int) -> Interruption | None:
    """The event an interruption-information field holds, or None if its valid bit is clear."""
    if not info & VALID:
        return None
    return Interruption(info & 0xFF, InterruptionType(info >> 8 & 7), bool(info >> 11 & 1))


def describe(info: ExitInfo) -> str:
    """The qualification in words, for the trace's ``qualification`` field ("" if the exit has none)."""
    if info.reason is ExitReason.CR_ACCESS:
        return _describe_cr(decode_cr_access(info.qualification), info.guest_linear_address)
    if info.reason is ExitReason.IO_INSTRUCTION:
        return _describe_io(decode_io(info.qualification))
    if info.reason is ExitReason.EPT_VIOLATION:
        return _describe_ept(decode_ept_violation(info.qualification), info.guest_physical_address,
                             info.guest_linear_address)
    if info.reason in (ExitReason.EXCEPTION_NMI, ExitReason.EXTERNAL_INTERRUPT):
        event = decode_interruption_info(info.interruption_info or 0)
        return _describe_event(event, info.interruption_error_code) if event else ""
    if info.reason is ExitReason.INVLPG:
        return f"invlpg {info.qualification:#x}"
    return ""


def _describe_cr(q: CrAccessQualification, linear: int | None) -> str:
    if q.access is CrAccess.MOV_TO_CR:
        return f"mov to cr{q.cr} from {GPR_NAMES[q.gpr]}"
    if q.access is CrAccess.MOV_FROM_CR:
        return f"mov from cr{q.cr} to {GPR_NAMES[q.gpr]}"
    if q.access is CrAccess.CLTS:
        return "clts"
    source = f"memory at {linear:#x}" if q.lmsw_memory and linear is not None else \
        "memory" if q.lmsw_memory else "a register"
    return f"lmsw {q.lmsw_source:#06x} from {source}"


def _describe_io(q: IoQualification) -> str:
    mnemonic = ("rep " if q.rep else "") + ("in" if q.direction_in else "out") + ("s" if q.string else "")
    operand = "imm8" if q.immediate else "dx"
    return f"{mnemonic} {operand} {q.port:#x}, {q.size} byte{'s' if q.size > 1 else ''}"


def _describe_ept(q: EptViolation, gpa: int | None, linear: int | None) -> str:
    access = "fetch from" if q.fetch else "write to" if q.write else "read from"
    walk = "page-walk " if q.linear_valid and not q.linear_is_translation else ""
    where = f"gpa {gpa:#x}" if gpa is not None else "gpa ?"
    via = f" (linear {linear:#x})" if q.linear_valid and linear is not None else ""
    if not (q.readable or q.writable or q.executable):
        why = "not mapped"
    elif q.fetch and not q.executable:
        why = "not executable"
    elif q.write and not q.writable:
        why = "not writable"
    else:
        why = "not readable"
    return f"{walk}{access} {where}{via}: {why}"


def _describe_event(event: Interruption, error_code: int | None) -> str:
    if event.kind is InterruptionType.EXTERNAL_INTERRUPT:
        return f"external interrupt, vector {event.vector:#x}"
    if event.kind is InterruptionType.NMI:
        return "NMI"
    text = EXCEPTION_NAMES.get(event.vector, f"vector {event.vector}")
    if event.kind is not InterruptionType.HARDWARE_EXCEPTION:
        text += f" ({event.kind.name.lower().replace('_', ' ')})"
    if event.error_code_valid and error_code is not None:
        text += f", error code {error_code:#x}"
    return text


# --- the VMCS ------------------------------------------------------------------------

class ActivityState(enum.IntEnum):
    """The guest's activity state (24.4.2)."""
    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2                # after a triple fault
    WAIT_FOR_SIPI = 3


class Blocking(enum.IntFlag):
    """The interruptibility state (SDM Table 24-3). Bit 2, blocking by SMI, is not modelled."""
    STI = 1 << 0                # sti with IF=0: interrupts held off for one instruction
    MOV_SS = 1 << 1             # mov ss / pop ss: interrupts and NMIs held off for one instruction
    NMI = 1 << 3                # an NMI is being handled: the next waits for IRET


@dataclass
class Segment:
    """A segment register as the VMCS keeps it: the selector and its hidden descriptor cache.

    ``access_rights`` has the VMCS format (SDM Table 24-2, Format of Access Rights):
    bits 15:0 are bits 23:8 of the descriptor's high word (type, S, DPL, P, AVL, L,
    D/B, G) with the limit's bits 11:8 reserved, and bit 16 marks the register
    unusable (loaded with a null selector).
    """
    selector: int = 0
    base: int = 0
    limit: int = 0
    access_rights: int = 0


@dataclass
class DescriptorTable:
    base: int = 0
    limit: int = 0


@dataclass
class GuestState:
    """The guest-state area for a 32-bit guest (24.4): loaded by VM entry, saved by VM exit."""
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0
    dr7: int = 0x400            # its reset value
    rsp: int = 0
    rip: int = 0
    rflags: int = 0x2           # bit 1 always reads 1
    cs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ldtr: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    gdtr: DescriptorTable = field(default_factory=DescriptorTable)
    idtr: DescriptorTable = field(default_factory=DescriptorTable)
    activity_state: ActivityState = ActivityState.ACTIVE
    interruptibility: Blocking = Blocking(0)


@dataclass
class HostState:
    """The host-state area, as much as a software model has (24.5).

    Hardware also loads the monitor's RIP, RSP and segments from here at every exit. In
    this model the monitor is the Python code that ran the guest, and an exit is a
    return to it: there is no entry point to store. The control registers are kept as
    the values the monitor runs with.
    """
    cr0: int = 0
    cr3: int = 0
    cr4: int = 0


@dataclass(frozen=True)
class Injection:
    """An event VM entry delivers through the guest's IDT."""
    vector: int
    kind: InterruptionType
    error_code: int | None
    length: int                 # the instruction's length, for the software kinds; else 0


@dataclass
class Vmcs:
    """One virtual CPU's VMCS: guest and host state, controls, event injection, the last exit."""
    controls: VmcsControls = field(default_factory=VmcsControls)
    guest: GuestState = field(default_factory=GuestState)
    host: HostState = field(default_factory=HostState)
    # Event injection (24.8.3): the VM-entry interruption-information field (Table 24-13),
    # the exception error code and the instruction length.
    entry_interruption_info: int = 0
    entry_exception_error_code: int = 0
    entry_instruction_length: int = 0
    exit_info: ExitInfo | None = None

    def inject(self, vector: int, kind: InterruptionType, error_code: int | None = None,
               length: int = 0) -> None:
        """Ask the next VM entry to deliver an event, refusing what VM entry would refuse.

        The checks are the SDM's on the VM-entry control fields (26.2.1.3) and on the
        guest's interruptibility and activity state (26.3.1.5). A real VM entry that
        failed one would not enter at all: VMfail ("invalid control field") for the
        first kind, an exit with reason 33 (invalid guest state) for the second.
        """
        kind = InterruptionType(kind)
        problem = self._injection_problem(vector, kind, error_code, length)
        if problem:
            raise ValueError(f"cannot inject vector {vector} as {kind.name.lower()}: {problem}")
        self.entry_interruption_info = interruption_info(vector, kind, error_code is not None)
        self.entry_exception_error_code = error_code or 0
        self.entry_instruction_length = length

    def _injection_problem(self, vector: int, kind: InterruptionType, error_code: int | None,
                           length: int) -> str | None:
        if self.entry_interruption_info & VALID:
            return "an event is already waiting for the next VM entry"
        if not 0 <= vector <= 0xFF:
            return "a vector is 0-255"
        if kind is InterruptionType.NMI and vector != NMI:
            return "an NMI is vector 2"
        if kind is InterruptionType.HARDWARE_EXCEPTION and vector > 31:
            return "a hardware exception's vector is at most 31"
        # An error code is delivered iff the event is a hardware exception that has one,
        # and the guest is in protected mode (always, unless the guest is unrestricted).
        protected = not self.controls.unrestricted or bool(self.guest.cr0 & CR0_PE)
        needs_error_code = (protected and kind is InterruptionType.HARDWARE_EXCEPTION
                            and vector in INJECTED_ERROR_CODE_VECTORS)
        if needs_error_code and error_code is None:
            return "this exception delivers an error code"
        if not needs_error_code and error_code is not None:
            return ("only a hardware exception 8, 10-14, 17 or 21, in protected mode, "
                    "delivers an error code")
        if error_code is not None and not 0 <= error_code <= 0xFFFF:
            return "bits 31:16 of an injected error code must be 0"
        if kind.is_software and not 1 <= length <= MAX_INSTRUCTION_LENGTH:
            return "a software interrupt or exception needs its instruction's length (1-15)"
        return self._blocked(vector, kind)

    def _blocked(self, vector: int, kind: InterruptionType) -> str | None:
        """Why the guest's interruptibility or activity state forbids the event (26.3.1.5)."""
        blocking = self.guest.interruptibility
        if kind is InterruptionType.EXTERNAL_INTERRUPT and blocking & (Blocking.STI | Blocking.MOV_SS):
            return "an sti or mov ss shadow holds off interrupts for one more instruction"
        if kind is InterruptionType.NMI and blocking & Blocking.MOV_SS:
            return "a mov ss shadow holds off NMIs for one more instruction"
        if kind is InterruptionType.NMI and self.controls.virtual_nmis and blocking & Blocking.NMI:
            return "virtual-NMI blocking is in effect"
        state = self.guest.activity_state
        if state is ActivityState.HLT and not (
                kind in (InterruptionType.EXTERNAL_INTERRUPT, InterruptionType.NMI)
                or kind is InterruptionType.HARDWARE_EXCEPTION and vector in (DB, MC)):
            return "a halted CPU takes only interrupts, NMIs, #DB and #MC"
        if state is ActivityState.SHUTDOWN and not (
                kind is InterruptionType.NMI or kind is InterruptionType.HARDWARE_EXCEPTION and vector == MC):
            return "a shut-down CPU takes only NMIs and #MC"
        if state is ActivityState.WAIT_FOR_SIPI:
            return "a CPU waiting for SIPI takes no events"
        return None

    def take_injection(self) -> Injection | None:
        """VM entry's side: the event to deliver, if any, consumed.

        An entry that delivers an event leaves no sti or mov ss blocking behind (26.6.1).
        The hardware clears the valid bit only at the next VM exit; as no entry happens
        without an exit between, clearing it here is the same and keeps the model safe.
        """
        event = decode_interruption_info(self.entry_interruption_info)
        if event is None:
            return None
        self.entry_interruption_info &= ~VALID
        self.guest.interruptibility &= ~(Blocking.STI | Blocking.MOV_SS)
        return Injection(event.vector, event.kind,
                         self.entry_exception_error_code if event.error_code_valid else None,
                         self.entry_instruction_length if event.kind.is_software else 0)

    def record_exit(self, info: ExitInfo) -> None:
        """A VM exit: its information is stored, and any injection not yet taken is cancelled (24.8.3)."""
        self.exit_info = info
        self.entry_interruption_info &= ~VALID
