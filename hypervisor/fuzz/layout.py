"""The fuzz guest's fixed half: where everything lives, and the handler every event reaches.

A random instruction stream dies at its first fault unless something catches it, and the
bare machine catches nothing: the guest must bring its own GDT, TSS and IDT. So every
fuzz guest starts with the same prologue, written here once. Its IDT sends all 256
vectors, through one 8-byte stub each (``mov al, vector; jmp handler``), to a single
handler that trusts nothing the stream may have broken: it loads a *backup* GDT through
CS (the only segment the gate itself just loaded), restores the live GDT from it, reloads
GDTR, IDTR, LDTR, TR, CR0, CR4, DR7, EFLAGS and the stacks, writes the vector to COM1 (so the
console is the list of events), and resumes at the next chunk of the stream. After the
last chunk it writes 0 to isa-debug-exit. A stream thus survives many faults, and
each technique's console shows which events it delivered.

Keystone 0.9.2 assembles the prologue (once per process), with its known traps avoided:
numbers in hex, and as bytes what it gets wrong: lgdt/lidt (it adds a 0x66 prefix), far
jumps (it cannot encode them), ``rep movsd`` (refused) and ``popfd`` (it writes ``popf``
as the 16-bit ``66 9d``).
"""
from __future__ import annotations

from functools import lru_cache

# The guest's memory layout (all inside the image, loaded at 1 MiB).
LOAD = 0x100000
ENTRY = LOAD + 0x20              # the prologue's code, right after the Multiboot header
CODE_END = LOAD + 0xC00
GDT_PTR = LOAD + 0xC02           # pseudo-descriptors (limit at +0, base at +2)
BACKUP_GDT_PTR = LOAD + 0xC0A
IDT_PTR = LOAD + 0xC12
EVENTS = LOAD + 0xC20            # events taken so far
CHUNK_COUNT = LOAD + 0xC24       # chunks in the stream: the handler exits after that many events
CHUNK_TABLE = LOAD + 0xD00       # address of each chunk
MAX_CHUNKS = 64                  # the table's room, up to the GDT
GDT = LOAD + 0xE00               # the live GDT, which the stream may edit
GDT_ENTRIES = 16
BACKUP_GDT = LOAD + 0xF00        # pristine copy the handler restores the live GDT from
TSS = LOAD + 0x1000
LDT = LOAD + 0x1100
LDT_ENTRIES = 4
STUBS = LOAD + 0x1800            # 256 x 8 bytes: mov al, vector; jmp handler
IDT = LOAD + 0x2000
PAGE_DIRECTORY = LOAD + 0x3000
PAGE_TABLE = LOAD + 0x4000       # identity map of the first 4 MiB
KSTACK_TOP = LOAD + 0x6000       # ring-0 stack (TSS esp0)
STACK_TOP = LOAD + 0x7000        # the stream's stack, at any ring
SCRATCH = LOAD + 0x7000          # a data page for the stream
STREAM = LOAD + 0x8000
STREAM_MAX = 0x6000

SEL_KCODE, SEL_KDATA, SEL_UCODE, SEL_UDATA, SEL_TSS = 0x08, 0x10, 0x1B, 0x23, 0x28
FIXED_ENTRIES = 6                # null, kcode, kdata, ucode, udata, tss; the rest are random
COM1 = 0x3F8
DEBUG_EXIT = 0xF4
RAM_BYTES = 64 << 20             # run_image's default
MONITOR_AREA = (0xFFC00000, 0xFFC24000)   # where trap's tables lie without the C TLB fill (else above 4 GiB)

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_FLAGS = (1 << 1) | (1 << 16)     # memory info; a.out kludge (address fields valid)

# The prologue: entry, and the event handler every IDT gate leads to. Written for keystone
# 0.9.2 (see shared UNICORN.md): numbers in hex; lgdt/lidt, far jumps, rep movsd and popfd as bytes.
PROLOGUE = f"""
EVENTS = {EVENTS:#x}
CHUNK_COUNT = {CHUNK_COUNT:#x}
CHUNK_TABLE = {CHUNK_TABLE:#x}
GDT = {GDT:#x}
BACKUP_GDT = {BACKUP_GDT:#x}
TSS = {TSS:#x}
KSTACK_TOP = {KSTACK_TOP:#x}
STACK_TOP = {STACK_TOP:#x}
SCRATCH = {SCRATCH:#x}
_start:
    mov esp, KSTACK_TOP
    xor ebx, ebx
    mov dword ptr [EVENTS], ebx
    jmp reset
    .balign 0x20, 0xcc
handler:
    # The stream may have broken anything: load the backup GDT through CS, which the gate
    # itself just loaded, before any data segment is trusted.
    .byte 0x2e, 0x0f, 0x01, 0x15; .long {BACKUP_GDT_PTR:#x}
    mov ecx, {SEL_KDATA:#x}
    mov ds, ecx
    mov es, ecx
    mov ss, ecx
    mov esp, KSTACK_TOP
    cli
    movzx eax, al
    mov edx, {COM1:#x}
    out dx, al
    mov ebx, dword ptr [EVENTS]
    inc ebx
    mov dword ptr [EVENTS], ebx
    cmp ebx, dword ptr [CHUNK_COUNT]
    jae finish
reset:
    cld
    mov esi, BACKUP_GDT
    mov edi, GDT
    mov ecx, {GDT_ENTRIES * 2:#x}
    .byte 0xf3, 0xa5                     # rep movsd
    .byte 0x0f, 0x01, 0x15; .long {GDT_PTR:#x}
    .byte 0xea; .long reload; .word {SEL_KCODE:#x}
reload:
    mov ecx, {SEL_KDATA:#x}
    mov ds, ecx
    mov es, ecx
    mov ss, ecx
    mov esp, KSTACK_TOP
    xor ecx, ecx
    mov fs, ecx
    mov gs, ecx
    lldt cx
    .byte 0x0f, 0x01, 0x1d; .long {IDT_PTR:#x}
    mov dword ptr [TSS + 0x4], KSTACK_TOP
    mov dword ptr [TSS + 0x8], {SEL_KDATA:#x}
    mov ecx, {SEL_TSS:#x}
    ltr cx
    mov ecx, 0x11
    mov cr0, ecx
    xor ecx, ecx
    mov cr4, ecx
    mov dr7, ecx
    push ecx
    .byte 0x9d                           # popfd (keystone writes popf as 66 9d)
    mov esp, STACK_TOP
    mov ecx, ebx
    shl ecx, 0x2
    add ecx, CHUNK_TABLE
    mov ecx, dword ptr [ecx]
    xor eax, eax
    xor edx, edx
    xor ebx, ebx
    xor esi, esi
    xor edi, edi
    mov ebp, SCRATCH
    jmp ecx
finish:
    mov edx, {DEBUG_EXIT:#x}
    xor eax, eax
    out dx, al
    hlt
    jmp finish
"""


@lru_cache(maxsize=None)
def prologue() -> tuple[bytes, int]:
    """(code at ENTRY, address of the event handler), assembled once per process."""
    from keystone import KS_ARCH_X86, KS_MODE_32, KS_OPT_SYNTAX_INTEL, Ks
    from ..image.assemble import hex_literals
    ks = Ks(KS_ARCH_X86, KS_MODE_32)
    ks.syntax = KS_OPT_SYNTAX_INTEL            # pins keystone's radix (UNICORN.md)
    text = "\n".join(hex_literals(line.split("#", 1)[0]) for line in PROLOGUE.splitlines())
    code = bytes(ks.asm(text, ENTRY)[0])
    handler = ENTRY + 0x20                     # after _start, aligned by .balign
    if code[0x20:0x24] != b"\x2e\x0f\x01\x15":
        raise AssertionError("the fuzz prologue's handler is not where it should be")
    if ENTRY + len(code) > CODE_END:
        raise AssertionError(f"the fuzz prologue is {len(code)} bytes: it overlaps its data")
    return code, handler


# Descriptors, as the SDM lays them out (Vol. 3, 3.4.5 and 6.11).
def segment(base: int, limit: int, access: int, flags: int = 0xC) -> int:
    """A code/data/system segment descriptor (flags: G, D/B, L, AVL nibble)."""
    low = (limit & 0xFFFF) | (base & 0xFFFF) << 16
    high = ((base >> 16) & 0xFF) | access << 8 | ((limit >> 16) & 0xF) << 16 | flags << 20 | (base & 0xFF000000)
    return high << 32 | low


def gate(selector: int, offset: int, gate_type: int, dpl: int, present: bool = True, params: int = 0) -> int:
    """An interrupt, trap, task or call gate."""
    low = (offset & 0xFFFF) | (selector & 0xFFFF) << 16
    high = (offset & 0xFFFF0000) | int(present) << 15 | dpl << 13 | gate_type << 8 | (params & 0x1F)
    return high << 32 | low


FIXED_GDT = [0, segment(0, 0xFFFFF, 0x9A), segment(0, 0xFFFFF, 0x92), segment(0, 0xFFFFF, 0xFA),
             segment(0, 0xFFFFF, 0xF2), segment(TSS, 0x67, 0x89, 0)]
