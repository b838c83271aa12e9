"""The random half of a fuzz guest: hostile values and templates of instructions.

A stream of uniformly random bytes mostly exercises the decoder and dies on its first
#UD; what a monitor gets wrong is the *privileged and sensitive* instructions, fed with
operands a kernel author would never write. So a stream is built from weighted
templates, each encoding one such instruction (or a short sequence that sets up its
operands) byte by byte, with random bytes mixed in. No assembler is used: keystone is
too slow for ten thousand guests and mis-assembles exactly the encodings a fuzzer wants
(far jumps, ``lgdt``, prefixes).

Hostile values come from ``Writer``: addresses (mostly in RAM, where the stream survives,
sometimes in trap's monitor area at 0xFFC00000-0xFFC24000, outside RAM, in MMIO holes or
wrapping at 4 GiB), selectors (the runtime's, the stream's random descriptors, the LDT,
past the GDT limit, trap's own 0xFFE8-0xFFF8), ports and MSRs. Each template records a
``Piece`` (address, size, name) so a failure can be explained in the template's words.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Callable

from .layout import (BACKUP_GDT, CHUNK_TABLE, COM1, ENTRY, EVENTS, FIXED_ENTRIES, GDT, GDT_ENTRIES, GDT_PTR,
                     IDT, IDT_PTR, LDT, LDT_ENTRIES, MONITOR_AREA, PAGE_DIRECTORY, PAGE_TABLE, RAM_BYTES,
                     SCRATCH, SEL_KCODE, SEL_KDATA, SEL_TSS, SEL_UCODE, SEL_UDATA, STACK_TOP, STREAM, STUBS,
                     TSS, gate, segment)


@dataclass(frozen=True)
class Piece:
    """One template's bytes in the stream: where it starts and what it was meant to be."""
    address: int
    size: int
    template: str


def _u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def _u16(v: int) -> bytes:
    return struct.pack("<H", v & 0xFFFF)


class Writer:
    """Encodes templates into the stream, remembering what each piece was."""

    def __init__(self, rng: random.Random, handler: int):
        self.rng = rng
        self.handler = handler
        self.code = bytearray()
        self.pieces: list[Piece] = []
        self.jump_fixups: list[int] = []      # offsets of rel32 fields aimed into the stream

    @property
    def here(self) -> int:
        return STREAM + len(self.code)

    def put(self, template: str, *parts: bytes) -> None:
        data = b"".join(parts)
        self.pieces.append(Piece(self.here, len(data), template))
        self.code += data

    # -- hostile values ---------------------------------------------------------------------
    def address(self) -> int:
        """Mostly inside RAM (a stream that touches unmapped memory ends there), sometimes not."""
        r = self.rng
        kind = r.choices(ADDRESS_KINDS, ADDRESS_WEIGHTS)[0]
        if kind == "scratch":
            return SCRATCH + r.randrange(0x1000)
        if kind == "tables":
            return r.choice((GDT, BACKUP_GDT, IDT, TSS, LDT, PAGE_DIRECTORY, PAGE_TABLE, CHUNK_TABLE,
                             EVENTS)) + r.randrange(0x80)
        if kind == "idt":
            return IDT + r.randrange(0x800)
        if kind == "stream":                                  # self-modifying code
            return STREAM + r.randrange(0x800)
        if kind == "handler":
            return r.choice((STUBS + r.randrange(0x800), ENTRY + r.randrange(0x100)))
        if kind == "ram":
            return r.randrange(RAM_BYTES)
        if kind == "low":                                     # IVT, BDA, boot GDT, multiboot info
            return r.randrange(0x10000)
        if kind == "end of ram":
            return RAM_BYTES - r.randrange(1, 8)
        if kind == "monitor":
            return r.choice((MONITOR_AREA[0] + r.randrange(MONITOR_AREA[1] - MONITOR_AREA[0]),
                             r.choice((0xFFC00000, 0xFFC10000, 0xFFC20000, 0xFFC21000, 0xFFC22000,
                                       0xFFC23F00, 0xFFC0FFE8)) + r.randrange(-8, 16)))
        if kind == "mmio":
            return r.choice((0xFEE00000, 0xFEC00000, 0xFED00000, 0xFFFC0000, 0xA0000)) + r.randrange(0x400)
        if kind == "wrap":
            return (1 << 32) - r.randrange(1, 8)
        return r.randrange(RAM_BYTES, 1 << 32)                # outside RAM

    def selector(self) -> int:
        r = self.rng
        return r.choice((
            lambda: r.choice((0, SEL_KCODE, SEL_KDATA, SEL_UCODE, SEL_UDATA, SEL_TSS)),
            lambda: r.choice((SEL_KCODE, SEL_KDATA, SEL_UCODE & ~3, SEL_UDATA & ~3)) | r.randrange(4),
            lambda: 8 * r.randrange(FIXED_ENTRIES, GDT_ENTRIES) | r.randrange(4),   # the random entries
            lambda: 8 * r.randrange(LDT_ENTRIES) | 4 | r.randrange(4),             # the LDT
            lambda: 8 * r.randrange(GDT_ENTRIES, 0x2000) | r.randrange(8),         # past the limit
            lambda: r.choice((0xFFE8, 0xFFF0, 0xFFF8)) | r.randrange(4),           # trap's own
            lambda: r.randrange(0x10000),
        ))()

    def port(self) -> int:
        r = self.rng
        return r.choice((
            lambda: r.choice((0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x80,
                              0x92, 0xCF8, 0xCFC, 0x510, 0x511, 0x402, 0xE9)),
            lambda: COM1 + r.randrange(8),
            lambda: r.randrange(0x100),
            lambda: r.randrange(0x10000),
        ))()

    def value(self) -> int:
        r = self.rng
        return r.choice((
            lambda: 0, lambda: 0xFFFFFFFF, lambda: 1 << r.randrange(32),
            lambda: r.getrandbits(32), lambda: r.randrange(0x100),
            self.address, self.selector,
        ))()

    def eflags(self) -> int:
        r = self.rng
        flags = 0x2 | r.choice((0, 0x200)) | r.randrange(4) << 12
        if r.random() < 0.1:
            flags |= r.getrandbits(32) & 0x003F4FD5 & ~0x100     # no TF: that is its own template
        if r.random() < 0.03:
            flags |= 0x100
        return flags

    def mov_reg(self, reg: int, value: int) -> bytes:
        return bytes((0xB8 + reg,)) + _u32(value)

    def push(self, value: int) -> bytes:
        return b"\x68" + _u32(value)


# Where hostile addresses point, and how often (weights). Unicorn ends the run at the first
# access outside RAM, so those are rare enough that most streams get deep.
ADDRESS_KINDS, ADDRESS_WEIGHTS = zip(
    ("scratch", 10), ("tables", 4), ("idt", 2), ("stream", 3), ("handler", 1), ("ram", 4), ("low", 2),
    ("end of ram", 0.2), ("monitor", 0.6), ("mmio", 0.2), ("wrap", 0.1), ("outside", 0.2))

# Each template: (weight, name, function(writer) -> None).
TEMPLATES: list[tuple[float, str, Callable[[Writer], None]]] = []


def template(weight: float, name: str | None = None):
    def register(fn):
        TEMPLATES.append((weight, name or fn.__name__, fn))
        return fn
    return register


@template(8)
def random_bytes(w: Writer) -> None:
    w.put("random bytes", bytes(w.rng.getrandbits(8) for _ in range(w.rng.randrange(1, 7))))


@template(6)
def set_register(w: Writer) -> None:
    reg = w.rng.choice((0, 1, 2, 3, 5, 6, 7))
    w.put("mov reg, value", w.mov_reg(reg, w.value()))


@template(1)
def set_esp(w: Writer) -> None:
    w.put("mov esp, hostile", w.mov_reg(4, w.rng.choice((w.address(), w.address(), STACK_TOP, 0, 2))))


@template(3)
def interrupt_flag(w: Writer) -> None:
    r = w.rng
    w.put("cli/sti", r.choice((b"\xfa", b"\xfb", b"\xfb\x90", b"\xfb\xfa", b"\xfb\xf4")))


@template(0.5)
def hlt(w: Writer) -> None:
    w.put("hlt", b"\xf4")


@template(3)
def flags(w: Writer) -> None:
    r = w.rng
    w.put("pushf/popf", r.choice((b"\x9c", w.push(w.eflags()) + b"\x9d", b"\x9c\x58", b"\x9c\x9d")))


@template(0.5)
def single_step(w: Writer) -> None:
    w.put("popf with TF", w.push(0x102 | w.rng.choice((0, 0x200))) + b"\x9d" + b"\x90" * w.rng.randrange(3))


@template(4)
def iret_frame(w: Writer) -> None:
    """iretd over a frame to every ring, with the stream's next instruction as target."""
    r = w.rng
    kind = r.randrange(4)
    if kind == 0:       # to ring 3 with the runtime's user selectors
        cs, ss = SEL_UCODE, SEL_UDATA
    elif kind == 1:     # same ring
        cs, ss = SEL_KCODE, SEL_KDATA
    else:               # anything
        cs, ss = w.selector(), w.selector()
    esp = r.choice((STACK_TOP - 0x100, STACK_TOP - 0x100, w.address()))
    outer = r.random() < 0.8 or kind == 0
    size = 5 * (5 if outer else 3) + 1
    target = w.here + size if r.random() < 0.85 else w.address()
    frame = ((w.push(ss) + w.push(esp)) if outer else b"") + w.push(w.eflags()) + w.push(cs) + w.push(target)
    w.put(f"iretd to {cs:#x}", frame, b"\xcf")


@template(1)
def iret_random(w: Writer) -> None:
    w.put("iretd (whatever is on the stack)", w.rng.choice((b"\xcf", b"\x66\xcf")))


@template(3)
def descriptor_table(w: Writer) -> None:
    """lgdt/lidt/sgdt/sidt at a hostile address, or reloading the stream's own tables."""
    r = w.rng
    op = r.choice(((0x15, "lgdt"), (0x1D, "lidt"), (0x05, "sgdt"), (0x0D, "sidt")))
    addr = r.choice((w.address(), w.address(), GDT_PTR, IDT_PTR, SCRATCH + 0x10))
    if op[1] in ("lgdt", "lidt") and addr == SCRATCH + 0x10:
        # a table of our own making: random base and limit
        w.put("write pseudo-descriptor", b"\xc7\x05" + _u32(addr) + _u32(r.getrandbits(16) << 16 | r.getrandbits(16)),
              b"\xc7\x05" + _u32(addr + 4) + _u32(w.address() >> 16))
    w.put(f"{op[1]} [{addr:#x}]", b"\x0f\x01" + bytes((op[0],)) + _u32(addr))


@template(3)
def ldt_tr(w: Writer) -> None:
    r = w.rng
    name, modrm = r.choice((("lldt", 0xD0), ("ltr", 0xD8), ("str", 0xC8), ("sldt", 0xC0),
                            ("verr", 0xE0), ("verw", 0xE8)))
    sel = w.selector()
    w.put(f"{name} {sel:#x}", w.mov_reg(0, sel), b"\x0f\x00" + bytes((modrm,)))


@template(2)
def lar_lsl(w: Writer) -> None:
    sel = w.selector()
    w.put(f"lar/lsl {sel:#x}", w.mov_reg(1, sel), w.rng.choice((b"\x0f\x02\xc1", b"\x0f\x03\xc1")))


CR_VALUES = {
    0: lambda r: r.choice((0x11, 0x13, 0x19, 0x80000011, 0x80010011, 0x60000011, 0x10, 0x0, 0x31,
                           r.getrandbits(32))),
    3: lambda r: r.choice((PAGE_DIRECTORY, r.randrange(RAM_BYTES) & ~0xFFF, r.getrandbits(32), 0)),
    4: lambda r: r.choice((0x10, 0x20, 0x80, 0x200, 0x800, 0x4, 0x8, r.getrandbits(32) & 0x3FFFFF, 0)),
}


@template(4)
def control_register(w: Writer) -> None:
    r = w.rng
    n = r.choice((0, 0, 2, 3, 3, 4, 4, 1, 5, 6, 7, 8))
    reg = r.choice((0, 1, 3))
    if r.random() < 0.5:
        value = CR_VALUES.get(n, lambda r: r.getrandbits(32))(r)
        w.put(f"mov cr{n}, {value:#x}", w.mov_reg(reg, value), b"\x0f\x22" + bytes((0xC0 | (n & 7) << 3 | reg,)))
    else:
        w.put(f"mov reg, cr{n}", b"\x0f\x20" + bytes((0xC0 | (n & 7) << 3 | reg,)))


@template(2)
def debug_register(w: Writer) -> None:
    r = w.rng
    n = r.randrange(8)
    if r.random() < 0.5:
        value = r.choice((r.getrandbits(32), w.address(), 0x400, 0x403 | r.getrandbits(4) << 16, 0))
        w.put(f"mov dr{n}, {value:#x}", w.mov_reg(2, value), b"\x0f\x23" + bytes((0xC2 | n << 3,)))
    else:
        w.put(f"mov reg, dr{n}", b"\x0f\x21" + bytes((0xC2 | n << 3,)))


@template(2)
def msw(w: Writer) -> None:
    r = w.rng
    if r.random() < 0.5:
        value = r.choice((0x11, 0x13, 0x19, 0x10, 0x0, 0x1F, r.getrandbits(16)))
        w.put(f"lmsw {value:#x}", w.mov_reg(0, value), b"\x0f\x01\xf0")
    else:
        w.put("smsw/clts", r.choice((b"\x0f\x01\xe0", b"\x0f\x06", b"\x66\x0f\x01\xe0")))


@template(2)
def cache_and_tlb(w: Writer) -> None:
    r = w.rng
    w.put("invlpg/wbinvd/invd", r.choice((b"\x0f\x01\x3d" + _u32(w.address()), b"\x0f\x09", b"\x0f\x08")))


MSRS = (0x10, 0x1B, 0x3A, 0x174, 0x175, 0x176, 0x277, 0x2FF, 0xC0000080, 0xC0000081, 0xC0000082,
        0xC0000100, 0xC0000101, 0xC0000102, 0x40000000, 0x40000001)


@template(3)
def msr(w: Writer) -> None:
    r = w.rng
    ecx = r.choice(MSRS + (r.getrandbits(32), r.randrange(0x1000)))
    if r.random() < 0.5:
        w.put(f"rdmsr {ecx:#x}", w.mov_reg(1, ecx), b"\x0f\x32")
    else:
        w.put(f"wrmsr {ecx:#x}", w.mov_reg(1, ecx), w.mov_reg(0, w.value()), w.mov_reg(2, w.value()), b"\x0f\x30")


@template(4)
def software_interrupt(w: Writer) -> None:
    r = w.rng
    n = r.choice((r.randrange(256), r.randrange(32), 0x80, 0x82, 3, 4, 8, 13, 14))
    w.put("int n/int3/into/int1", r.choice((b"\xcd" + bytes((n,)), b"\xcc", b"\xce",
                                            b"\xb0\x7f\x04\x01\xce", b"\xf1")))


@template(4)
def port_io(w: Writer) -> None:
    r = w.rng
    port = w.port()
    value = r.choice((0, 0xFF, 0x20, 0x11, 0x34, r.getrandbits(8)))
    forms = [w.mov_reg(2, port) + w.mov_reg(0, value) + r.choice((b"\xee", b"\xef", b"\x66\xef")),
             w.mov_reg(2, port) + r.choice((b"\xec", b"\xed", b"\x66\xed"))]
    if port < 0x100:
        forms += [b"\xb0" + bytes((value,)) + b"\xe6" + bytes((port,)), b"\xe4" + bytes((port,))]
    if r.random() < 0.2:     # string I/O over a hostile buffer
        forms = [w.mov_reg(2, port) + w.mov_reg(1, r.randrange(1, 17)) + w.mov_reg(6, w.address())
                 + w.mov_reg(7, w.address()) + r.choice((b"\xf3\x6c", b"\xf3\x6d", b"\xf3\x6e", b"\xf3\x6f",
                                                         b"\x6c", b"\x6f"))]
    w.put(f"port I/O {port:#x}", r.choice(forms))


@template(1.5)
def timer_and_pic(w: Writer) -> None:
    """Program the PIT fast and unmask the PIC, so that interrupts arrive in the stream."""
    r = w.rng
    divisor = r.choice((1, 2, 100, 1000, 0x2E9B, 0))
    seq = (b"\xb0\x34\xe6\x43" + b"\xb0" + bytes((divisor & 0xFF,)) + b"\xe6\x40"
           + b"\xb0" + bytes((divisor >> 8,)) + b"\xe6\x40")
    seq += b"\xb0" + bytes((r.choice((0x00, 0xFE, 0xFA, 0xFF, r.getrandbits(8))),)) + b"\xe6\x21"
    seq += r.choice((b"", b"\xb0\x20\xe6\x20", b"\xfb", b"\xfb\xf4", b"\xfb\x90\x90\x90"))
    w.put(f"PIT divisor {divisor:#x}, PIC mask", seq)


SREG_MODRM = {"es": 0xC0, "ss": 0xD0, "ds": 0xD8, "fs": 0xE0, "gs": 0xE8}


@template(5)
def segment_load(w: Writer) -> None:
    r = w.rng
    sel = w.selector()
    sreg = r.choice(tuple(SREG_MODRM))
    form = r.randrange(4)
    if form == 0:
        w.put(f"mov {sreg}, {sel:#x}", w.mov_reg(0, sel), b"\x8e" + bytes((SREG_MODRM[sreg],)))
    elif form == 1:
        pop = {"es": b"\x07", "ss": b"\x17", "ds": b"\x1f", "fs": b"\x0f\xa1", "gs": b"\x0f\xa9"}[sreg]
        w.put(f"pop {sreg} ({sel:#x})", w.push(sel), pop)
    elif form == 2:      # lss/lds/les/lfs/lgs from a far pointer in memory
        op = r.choice((b"\x0f\xb2", b"\xc5", b"\xc4", b"\x0f\xb4", b"\x0f\xb5"))
        ptr = SCRATCH + 0x20
        w.put(f"l*s {sel:#x}", b"\xc7\x05" + _u32(ptr) + _u32(r.choice((STACK_TOP - 0x40, w.address()))),
              b"\x66\xc7\x05" + _u32(ptr + 4) + _u16(sel), op + b"\x05" + _u32(ptr))
    else:               # mov from a segment register, push cs, push ss
        w.put("read segment", r.choice((b"\x8c\xc8", b"\x8c\xd0", b"\x0e", b"\x16\x58", b"\x0e\x58", b"\x66\x8c\xd8")))


@template(3)
def far_transfer(w: Writer) -> None:
    """jmp/call far and retf to hostile selectors (including call gates and TSSs)."""
    r = w.rng
    sel = w.selector()
    kind = r.randrange(4)
    if kind == 0:
        w.put(f"jmp far {sel:#x}", b"\xea" + _u32(w.here + 7) + _u16(sel))
    elif kind == 1:
        w.put(f"call far {sel:#x}", b"\x9a" + _u32(w.here + 7) + _u16(sel))
    elif kind == 2:
        outer = r.random() < 0.5
        size = (20 if outer else 10) + 1
        frame = ((w.push(r.choice((SEL_UDATA, w.selector()))) + w.push(STACK_TOP - 0x80)) if outer else b"")
        w.put(f"retf to {sel:#x}", frame + w.push(sel) + w.push(w.here + size), b"\xcb")
    else:               # through a far pointer in memory
        ptr = SCRATCH + 0x30
        w.put(f"jmp/call far [mem] {sel:#x}", b"\xc7\x05" + _u32(ptr) + _u32(w.here + 25),
              b"\x66\xc7\x05" + _u32(ptr + 4) + _u16(sel), r.choice((b"\xff\x2d", b"\xff\x1d")) + _u32(ptr))


@template(2)
def fast_system_call(w: Writer) -> None:
    r = w.rng
    kind = r.randrange(4)
    if kind == 0:       # set the SYSENTER MSRs, then sysenter
        cs = r.choice((SEL_KCODE, 0, w.selector()))
        after = w.here + 3 * 17 + 2         # three (3 movs + wrmsr), then sysenter
        seq = b"".join(w.mov_reg(1, msr) + w.mov_reg(0, v) + w.mov_reg(2, 0) + b"\x0f\x30"
                       for msr, v in ((0x174, cs), (0x175, STACK_TOP - 0x200), (0x176, after)))
        w.put(f"wrmsr SYSENTER_*; sysenter (cs {cs:#x})", seq, b"\x0f\x34")
    elif kind == 1:     # sysexit to the next instruction
        w.put("sysexit", w.mov_reg(1, STACK_TOP - 0x100), w.mov_reg(2, w.here + 12), b"\x0f\x35")
    else:
        w.put("sysenter/sysexit/syscall/sysret", r.choice((b"\x0f\x34", b"\x0f\x35", b"\x0f\x05", b"\x0f\x07")))


@template(2)
def faults(w: Writer) -> None:
    r = w.rng
    w.put("fault", r.choice((
        b"\x0f\x0b",                                          # ud2
        b"\x31\xc9\xf7\xf1",                                  # xor ecx, ecx; div ecx
        b"\xb8\x00\x00\x00\x80\x99\xb9\xff\xff\xff\xff\xf7\xf9",   # idiv overflow
        b"\xf0\x90",                                          # lock nop: #UD
        b"\x62\x05" + _u32(SCRATCH),                          # bound eax, [scratch]
        b"\x0f\xff",                                          # ud0
        b"\xd9\xe8\x9b",                                      # fld1; fwait (CR0.EM/TS)
        b"\x66\x0f\x6e\xc0",                                  # movd xmm0, eax (no OSFXSR)
        b"\x0f\xae" + bytes((0x05,)) + _u32(w.address()),     # fxsave [hostile]
        b"\x0f\xa2", b"\x0f\x31", b"\x0f\x33", b"\x0f\x01\xf9",   # cpuid, rdtsc, rdpmc, rdtscp
        b"\x0f\x01\xc1", b"\x0f\x01\xd9", b"\x0f\x01\xc8", b"\x0f\x01\xc9", b"\x0f\x01\xd0",  # vmcall...
        b"\x0f\x01\xf8", b"\x0f\xaa", b"\x0f\x37",            # swapgs, rsm, getsec
    )))


@template(8)
def memory_access(w: Writer) -> None:
    r = w.rng
    addr = w.address()
    prefix = r.choice((b"",) * 6 + (b"\x2e", b"\x36", b"\x26", b"\x64", b"\x65", b"\x66"))
    form = r.choice((
        b"\xa1" + _u32(addr),                             # mov eax, [a]
        b"\xa3" + _u32(addr),                             # mov [a], eax
        b"\xc7\x05" + _u32(addr) + _u32(w.value()),       # mov dword [a], imm
        b"\xc6\x05" + _u32(addr) + bytes((r.getrandbits(8),)),
        b"\xff\x05" + _u32(addr),                         # inc dword [a]
        b"\xff\x35" + _u32(addr),                         # push dword [a]
        b"\x8f\x05" + _u32(addr),                         # pop dword [a]
        b"\x87\x05" + _u32(addr),                         # xchg [a], eax
        b"\x0f\xc7\x0d" + _u32(addr),                     # cmpxchg8b [a]
        b"\xff\x15" + _u32(addr),                         # call [a]
        w.mov_reg(3, addr) + b"\x8b\x43" + bytes((r.getrandbits(8),)),   # mov eax, [ebx+d8]
    ))
    if r.random() < 0.1:      # a string copy over it
        form = (w.mov_reg(6, w.address()) + w.mov_reg(7, addr) + w.mov_reg(1, r.choice((1, 4, 64, 0x400)))
                + r.choice((b"\xf3\xa5", b"\xf3\xab", b"\xf3\xa4", b"\xfd\xf3\xa5\xfc")))
    w.put(f"memory access at {addr:#x}", prefix + form)


@template(3)
def table_write(w: Writer) -> None:
    """Edit the live GDT, IDT, TSS or LDT behind the CPU's (or the monitor's) back."""
    r = w.rng
    where = r.choice(("gdt", "gdt", "idt", "tss", "ldt"))
    if where == "gdt":
        entry = random_descriptor(r, w.handler)
        addr = GDT + 8 * r.randrange(GDT_ENTRIES)
    elif where == "idt":
        entry = random_gate(r, w.handler)
        addr = IDT + 8 * r.choice((r.randrange(256), r.randrange(32), 13, 14, 8, 0x80))
    elif where == "tss":
        addr = TSS + r.choice((4, 8, 12, 16, 20, 24, 0x60, 0x64))
        entry = r.choice((w.address(), w.selector(), 0x10, 0x11, 0x12, 0x13)) | r.getrandbits(32) << 32
    else:
        entry = random_descriptor(r, w.handler)
        addr = LDT + 8 * r.randrange(LDT_ENTRIES)
    w.put(f"write {where} at {addr:#x}", b"\xc7\x05" + _u32(addr) + _u32(entry),
          b"\xc7\x05" + _u32(addr + 4) + _u32(entry >> 32))


@template(2)
def jump(w: Writer) -> None:
    """Into the middle of the stream (patched once its length is known), or anywhere."""
    r = w.rng
    kind = r.randrange(5)
    if kind <= 1:
        w.jump_fixups.append(len(w.code) + 1)
        w.put("jmp into the stream", b"\xe9" + bytes(4))
    elif kind == 2:
        w.jump_fixups.append(len(w.code) + 1)
        w.put("call into the stream", b"\xe8" + bytes(4))
    elif kind == 3:
        w.put("jmp eax (hostile)", w.mov_reg(0, w.address()), b"\xff\xe0")
    else:
        w.put("loop", w.mov_reg(1, r.choice((3, 100, 0x10000))), b"\xe2\xfe")


@template(1.5)
def paging(w: Writer) -> None:
    """Paging on, with the prepared identity map or a random CR3 (and sometimes PSE)."""
    r = w.rng
    cr3 = r.choice((PAGE_DIRECTORY, PAGE_DIRECTORY, r.randrange(RAM_BYTES) & ~0xFFF, r.getrandbits(32) & ~0xFFF))
    cr4 = r.choice((0, 0x10, 0x10, 0x20))
    cr0 = r.choice((0x80000011, 0x80010011, 0x80000019))
    w.put(f"paging on, cr3 {cr3:#x} cr4 {cr4:#x}", w.mov_reg(0, cr4), b"\x0f\x22\xe0", w.mov_reg(0, cr3),
          b"\x0f\x22\xd8", w.mov_reg(0, cr0), b"\x0f\x22\xc0")


@template(1)
def stack_ops(w: Writer) -> None:
    r = w.rng
    w.put("stack", r.choice((b"\x60", b"\x61", b"\xc8\x10\x00\x02", b"\xc9", b"\xc3", b"\xc2\x08\x00",
                             b"\x66\x60", b"\x54\x5c")))


def random_descriptor(r: random.Random, handler: int) -> int:
    target = r.choice((STREAM + r.randrange(0x400), handler, ENTRY, r.getrandbits(32)))
    return r.choice((
        lambda: segment(0, 0xFFFFF, r.choice((0xBA, 0xB2, 0xDA, 0xD2))),        # rings 1 and 2
        lambda: segment(0, 0xFFFFF, r.choice((0x9E, 0xFE, 0xDE, 0xBE))),        # conforming code
        lambda: segment(r.getrandbits(32), r.getrandbits(20), r.choice((0x9A, 0x92, 0xFA, 0xF2))),
        lambda: segment(0, 0xFFFF, 0x9A, 0),                                     # 16-bit code
        lambda: segment(0, 0xFFF, r.choice((0x96, 0xF6))),                       # expand-down
        lambda: segment(0, 0xFFFFF, r.choice((0x12, 0x1A, 0x72, 0x7A))),         # not present
        lambda: segment(r.choice((TSS, r.getrandbits(32))), r.choice((0x67, 0x20, 0xFFFF)),
                        r.choice((0x89, 0x8B, 0xA9, 0xC9, 0xE9, 0xEB)), 0),      # TSS at any DPL
        lambda: segment(LDT, LDT_ENTRIES * 8 - 1, r.choice((0x82, 0xE2)), 0),    # LDT
        lambda: gate(r.choice((SEL_KCODE, SEL_UCODE, 0x30 | r.randrange(4), r.choice((0xFFE8, 0xFFF8)))),
                     target, 0xC, r.randrange(4), params=r.choice((0, 0, 1, 3))),   # call gate
        lambda: gate(SEL_TSS, 0, 0x5, r.randrange(4)),                           # task gate
        lambda: gate(SEL_KCODE, handler, r.choice((0xE, 0xF)), 3),               # a gate in the GDT
        lambda: r.getrandbits(64),
        lambda: 0,
    ))()


def random_gate(r: random.Random, handler: int) -> int:
    vector = r.randrange(256)
    stub = STUBS + 8 * vector
    return r.choice((
        lambda: gate(SEL_KCODE, stub, 0xE, r.randrange(4)),
        lambda: gate(SEL_KCODE, stub, 0xF, r.randrange(4)),
        lambda: gate(SEL_KCODE, stub, 0xE, 3, present=False),
        lambda: gate(SEL_TSS, 0, 0x5, 3),                                        # task gate
        lambda: gate(r.choice((SEL_UCODE, SEL_KDATA, 0x30, 0x4C, 0xFFE8)), stub, 0xE, 3),
        lambda: gate(SEL_KCODE, r.getrandbits(32), 0xE, 3),
        lambda: gate(SEL_KCODE, stub, r.choice((0x6, 0x7, 0xC, 0x0, 0x9)), 3),   # 16-bit or not a gate
        lambda: r.getrandbits(64),
    ))()
