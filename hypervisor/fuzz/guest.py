"""A whole fuzz guest: the fixed prologue, a random stream, and the tables it starts with.

``generate(seed, index)`` is a pure function of its two arguments (``random.Random`` seeded
with the string ``"SEED:INDEX"``, which Python hashes the same way in every process), so a
failure found in a worker process is replayed exactly anywhere. The image is a flat
Multiboot v1 kernel with the a.out kludge, loaded at 1 MiB, as `qemu-system-i386 -kernel`
takes it. Besides the stream, each guest gets random GDT entries above the fixed six
(rings 1 and 2, conforming code, call and task gates, TSSs at any DPL, an LDT), a random
LDT entry, a page directory with an identity-mapped first 4 MiB and a few random entries
(for the paging template), and now and then a broken IDT gate.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from functools import lru_cache

from .layout import (BACKUP_GDT, BACKUP_GDT_PTR, CHUNK_COUNT, CHUNK_TABLE, ENTRY, FIXED_ENTRIES, FIXED_GDT, GDT,
                     GDT_ENTRIES, GDT_PTR, IDT, IDT_PTR, KSTACK_TOP, LDT, LDT_ENTRIES, LOAD, MAX_CHUNKS, MULTIBOOT_FLAGS,
                     MULTIBOOT_MAGIC, PAGE_DIRECTORY, PAGE_TABLE, SCRATCH, SEL_KCODE, SEL_KDATA, STACK_TOP,
                     STREAM, STREAM_MAX, STUBS, TSS, gate, prologue, segment)
from .templates import TEMPLATES, Piece, Writer, random_descriptor, random_gate, set_register


@dataclass(frozen=True)
class Stream:
    seed: int
    index: int
    image: bytes
    chunks: tuple[int, ...]          # address of each chunk
    pieces: tuple[Piece, ...]
    stream_end: int

    @property
    def name(self) -> str:
        return f"{self.seed}:{self.index}"


_WEIGHTS = [t[0] for t in TEMPLATES]


@lru_cache(maxsize=None)
def _base_image() -> bytes:
    """Everything in a guest image that does not depend on the stream (built once)."""
    code, handler = prologue()
    image = bytearray(STREAM - LOAD)
    image[ENTRY - LOAD:ENTRY - LOAD + len(code)] = code
    for vector in range(256):
        at = STUBS + 8 * vector
        stub = b"\xb0" + bytes((vector,)) + b"\xe9" + struct.pack("<i", handler - (at + 7)) + b"\x90"
        image[at - LOAD:at - LOAD + 8] = stub
    struct.pack_into("<HI", image, GDT_PTR - LOAD, GDT_ENTRIES * 8 - 1, GDT)
    struct.pack_into("<HI", image, BACKUP_GDT_PTR - LOAD, GDT_ENTRIES * 8 - 1, BACKUP_GDT)
    struct.pack_into("<HI", image, IDT_PTR - LOAD, 256 * 8 - 1, IDT)
    for vector in range(256):
        struct.pack_into("<Q", image, IDT - LOAD + 8 * vector, gate(SEL_KCODE, STUBS + 8 * vector, 0xE, 3))
    struct.pack_into("<II", image, TSS - LOAD + 4, KSTACK_TOP, SEL_KDATA)
    struct.pack_into("<H", image, TSS - LOAD + 102, 104)          # no I/O bitmap
    struct.pack_into("<1024I", image, PAGE_TABLE - LOAD, *(i << 12 | 0x7 for i in range(1024)))
    return bytes(image)


def generate(seed: int, index: int) -> Stream:
    """Stream ``index`` of ``seed``: the same bytes every time, in every process."""
    r = random.Random(f"{seed}:{index}")
    w = Writer(r, prologue()[1])
    chunks = []
    for _ in range(r.randrange(4, 17)):
        chunks.append(w.here)
        for _ in range(r.randrange(0, 3)):
            set_register(w)
        for fn in r.choices([t[2] for t in TEMPLATES], _WEIGHTS, k=r.randrange(3, 14)):
            fn(w)
        if len(w.code) > STREAM_MAX - 0x100:
            break
    return _link(seed, index, w, chunks, r)


def from_chunks(chunks: list[bytes]) -> Stream:
    """A guest whose stream is exactly these chunks, with the fixed tables only (for tests,
    and for turning a finding into a regression guest)."""
    w = Writer(random.Random(0), prologue()[1])
    starts = []
    for i, code in enumerate(chunks):
        starts.append(w.here)
        w.put(f"chunk {i}", code)
    return _link(-1, 0, w, starts, None)


def _link(seed: int, index: int, w: Writer, chunks: list[int], r: random.Random | None) -> Stream:
    """The image around a written stream: its end, the chunk table, the tables, the header.

    With ``r``, the tables get their random parts: GDT entries above the fixed ones, an LDT
    entry, page directory entries, perturbed page table entries and now and then a broken
    IDT gate. Without it they are the runtime's plain ones.
    """
    if not 0 < len(chunks) <= MAX_CHUNKS:
        raise ValueError(f"a fuzz guest has 1 to {MAX_CHUNKS} chunks, not {len(chunks)}")
    handler = w.handler
    image = bytearray(_base_image())
    w.put("end of stream: exit 0xfe", b"\xb0\xfe\xe6\xf4", b"\x0f\x0b")
    end = w.here
    for at in w.jump_fixups:
        target = STREAM + w.rng.randrange(len(w.code))
        struct.pack_into("<i", w.code, at, target - (STREAM + at + 4))
    extra = GDT_ENTRIES - FIXED_ENTRIES
    gdt = FIXED_GDT + ([random_descriptor(r, handler) for _ in range(extra)] if r else [0] * extra)
    struct.pack_into(f"<{GDT_ENTRIES}Q", image, GDT - LOAD, *gdt)
    struct.pack_into(f"<{GDT_ENTRIES}Q", image, BACKUP_GDT - LOAD, *gdt)
    ldt = [0, segment(0, 0xFFFFF, 0xFA), segment(0, 0xFFFFF, 0xF2), random_descriptor(r, handler) if r else 0]
    struct.pack_into(f"<{LDT_ENTRIES}Q", image, LDT - LOAD, *ldt)
    pd = {0: PAGE_TABLE | 0x7, 1: 0x400000 | 0x87}
    if r:
        for _ in range(r.randrange(4)):
            pd[r.choice((0x3FF, 0x3FE, r.randrange(1024)))] = r.choice((0x87, 0x83, PAGE_TABLE | 0x7,
                                                                         r.getrandbits(32)))
    for i, entry in pd.items():
        struct.pack_into("<I", image, PAGE_DIRECTORY - LOAD + 4 * i, entry)
    if r:
        for _ in range(r.randrange(6)):
            page = r.choice((r.randrange(1024), (SCRATCH >> 12), (STACK_TOP >> 12) - 1, STREAM >> 12))
            struct.pack_into("<I", image, PAGE_TABLE - LOAD + 4 * page, page << 12 | r.choice((0, 1, 3, 5, 0x7)))
        for _ in range(r.choice((0, 0, 0, 1, 2))):
            vector = r.randrange(256)
            struct.pack_into("<Q", image, IDT - LOAD + 8 * vector, random_gate(r, handler))
    struct.pack_into("<I", image, CHUNK_COUNT - LOAD, len(chunks))
    struct.pack_into(f"<{len(chunks)}I", image, CHUNK_TABLE - LOAD, *chunks)
    image += w.code
    image += bytes(-len(image) % 4)
    header = struct.pack("<8I", MULTIBOOT_MAGIC, MULTIBOOT_FLAGS, -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS) & 0xFFFFFFFF,
                         LOAD, LOAD, LOAD + len(image), LOAD + len(image), ENTRY)
    image[0:32] = header
    return Stream(seed, index, bytes(image), tuple(chunks), tuple(w.pieces), end)


def disassemble(stream: Stream) -> list[str]:
    """The stream as text: each template's name, then its instructions."""
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs
    cs = Cs(CS_ARCH_X86, CS_MODE_32)
    chunk_starts = set(stream.chunks)
    lines = []
    for piece in stream.pieces:
        if piece.address in chunk_starts:
            lines.append(f"chunk {stream.chunks.index(piece.address)}:")
        lines.append(f"  ; {piece.template}")
        data = stream.image[piece.address - LOAD:piece.address - LOAD + piece.size]
        done = 0
        for insn in cs.disasm(data, piece.address):
            lines.append(f"  {insn.address:#010x}  {insn.bytes.hex(' '):<30} {insn.mnemonic} {insn.op_str}")
            done += insn.size
        if done < len(data):
            lines.append(f"  {piece.address + done:#010x}  {data[done:].hex(' '):<30} (bytes)")
    return lines
