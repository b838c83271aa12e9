"""The boot loader's half of Multiboot v1: what goes where in RAM, and what the kernel is told.

A real PC is started by a boot loader (GRUB, or QEMU's `-kernel`) that reads the kernel file, copies
its bytes to physical memory, builds a "multiboot info" structure describing the machine, and
jumps to the entry point with EAX=0x2BADB002 and EBX pointing at that structure. Every technique
in this project starts a guest the same way, so this module does the reading and describing as
pure functions over bytes; the VMM does the copying and the jump.

We follow QEMU 7.2 (hw/i386/multiboot.c), the project's referee, rather than the letter of the
spec where they differ: the header must lie in the first 8192 bytes; flag bit 16 selects the
a.out kludge even for an ELF file, otherwise the file must be ELF32 i386 and is loaded by its
program headers (p_paddr); a video-mode request (bit 2) is ignored. We are stricter than QEMU
only where QEMU would load garbage or crash: every other malformation is an ImageError with a
one-line message, and no input makes this module raise anything else.

An image is hostile input, and the loader's work must be bounded by the machine, not by what
the image claims. Everything is checked before a byte is copied; the places this differs from
QEMU (include/hw/elf_ops.h, hw/core/loader.c, measured on qemu-system-i386 7.2):

* At most 64 program headers. QEMU takes any e_phnum (it loaded a kernel with 5,001); a kernel
  has a handful (Linux's vmlinux has 5), and the cap keeps the pairwise checks below cheap.
* Overlapping PT_LOAD segments are refused, as QEMU refuses overlapping ROM blobs. Before that,
  QEMU's rule for a segment whose zero-filled tail (filesz..memsz) overlaps another segment is
  applied: the tail is dropped (memsz becomes filesz). So the segments of an accepted image are
  disjoint ranges inside RAM above 1 MiB, and the bytes to copy or zero total less than RAM: an
  image cannot make the loader write 500 x 62 MiB into 64 MiB.
* A segment beyond RAM is refused; QEMU loads it into nothing.
* An image larger than 256 MiB is refused (MAX_IMAGE_BYTES); QEMU maps the file whatever its
  size. Kernels are a few MiB; an unstripped one can be stripped.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from hypervisor.errors import ImageError

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002  # EAX at entry: "a Multiboot loader started you"
HEADER_SEARCH_BYTES = 8192
HEADER_BYTES = 32  # magic, flags, checksum + the five a.out-kludge address fields
MAX_PROGRAM_HEADERS = 64
# The most we read of an image file. A kernel's loaded bytes must fit in guest RAM (64 MiB by
# default, 3 GiB at most), and a loaded kernel is a few MiB; 256 MiB leaves room for symbols and
# debug sections while bounding what a file (or /dev/zero) can make the host allocate.
MAX_IMAGE_BYTES = 256 << 20

# Header flags. Bits 0-15 are requirements: a loader that cannot meet one must refuse the kernel.
FLAG_PAGE_ALIGN = 1 << 0  # align modules: we load none, so it is trivially met
FLAG_MEMORY_INFO = 1 << 1  # we always give mem_lower/mem_upper and a memory map
FLAG_VIDEO_MODE = 1 << 2  # QEMU prints a warning and ignores it; so do we (text mode stays)
FLAG_AOUT_KLUDGE = 1 << 16
_UNDERSTOOD_REQUIREMENTS = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE

# Where the VMM writes the info structure: in conventional memory below 640 KiB, clear of the
# kernel at 1 MiB and of the real-mode IVT/BDA in the first pages. (QEMU puts its copy just after
# the kernel; a guest must only ever use the address in EBX.)
MULTIBOOT_INFO_ADDR = 0x9000

KERNEL_MIN_ADDR = 0x100000  # below 1 MiB lie the info structure, the BIOS data and VGA holes

# Info flags (what the info structure provides).
INFO_MEMORY = 1 << 0
INFO_CMDLINE = 1 << 2
INFO_MMAP = 1 << 6

E820_RAM = 1
E820_RESERVED = 2

# What QEMU 7.2 reports to a `-m 64` guest (probe: guests/meminfo.S, re-checked by tests/image):
#   flags=0x0000024f (mem, boot_device, cmdline, mods, mmap, loader name)
#   mem_lower=639 KiB   mem_upper=64384 KiB (= 64 MiB - 1 MiB - 128 KiB)
#   mmap (24-byte entries, size field 20):
#     0x00000000 len 0x0009fc00 type 1   conventional memory up to the EBDA
#     0x0009fc00 len 0x00000400 type 2   EBDA
#     0x000f0000 len 0x00010000 type 2   BIOS ROM
#     0x00100000 len 0x03ee0000 type 1   RAM above 1 MiB
#     0x03fe0000 len 0x00020000 type 2   top 128 KiB: SeaBIOS tables (ACPI, ...)
#     0xfffc0000 len 0x00040000 type 2   the flash/BIOS image below 4 GiB
# The same probe at -m 32 and -m 128 gives the same shape (mem_upper 31616 and 129920 KiB): SeaBIOS
# always reserves the top 128 KiB of RAM, so memory_map() scales that way.
LOW_RAM_END = 0x9FC00
EBDA_BYTES = 0x400
BIOS_ROM = (0xF0000, 0x10000)
TOP_RESERVED = 0x20000
FLASH = (0xFFFC0000, 0x40000)
INFO_STRUCT_BYTES = 88  # through the VBE fields, as the spec lays it out
MMAP_OFFSET = 0x60  # inside the blob, after the fixed structure


@dataclass(frozen=True)
class LoadSegment:
    """Bytes to copy to physical address paddr; bytes past len(data) up to memsz are zero (bss)."""

    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class KernelImage:
    entry: int
    segments: tuple[LoadSegment, ...]
    format: str  # "elf32" or "aout-kludge"


@dataclass(frozen=True)
class MultibootHeader:
    offset: int  # in the file
    flags: int
    header_addr: int
    load_addr: int
    load_end_addr: int
    bss_end_addr: int
    entry_addr: int


def find_header(data: bytes) -> MultibootHeader:
    """The first Multiboot header (magic + valid checksum, 4-byte aligned) in the first 8 KiB."""
    if not data:
        raise ImageError("empty kernel image")
    limit = min(len(data), HEADER_SEARCH_BYTES)
    saw_bad_checksum = False
    for offset in range(0, limit - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, offset)
        if magic != HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF:
            saw_bad_checksum = True
            continue
        fields = (0, 0, 0, 0, 0)
        if flags & FLAG_AOUT_KLUDGE:
            if offset + HEADER_BYTES > len(data):
                raise ImageError("truncated multiboot header: the address fields are missing")
            fields = struct.unpack_from("<5I", data, offset + 12)
        return MultibootHeader(offset, flags, *fields)
    if saw_bad_checksum:
        raise ImageError("multiboot header has a bad checksum")
    raise ImageError(f"no multiboot header in the first {HEADER_SEARCH_BYTES} bytes")


def _check_flags(flags: int) -> None:
    unsupported = flags & 0xFFFF & ~_UNDERSTOOD_REQUIREMENTS
    if unsupported:
        raise ImageError(f"multiboot header requires unsupported features (flags {unsupported:#x})")


def _check_in_ram(start: int, end: int, ram_bytes: int, what: str) -> None:
    if end > 1 << 32:
        raise ImageError(f"{what} {start:#x}-{end:#x} wraps past 4 GiB")
    if start < KERNEL_MIN_ADDR:
        raise ImageError(f"{what} starts at {start:#x}, below 1 MiB")
    if end > ram_bytes:
        raise ImageError(f"{what} {start:#x}-{end:#x} is beyond RAM ({ram_bytes:#x} bytes)")


def _parse_aout(data: bytes, h: MultibootHeader, ram_bytes: int) -> KernelImage:
    # The file offset of load_addr is the header's own offset minus its distance from load_addr.
    if h.header_addr < h.load_addr:
        raise ImageError("multiboot header_addr is below load_addr")
    if h.header_addr - h.load_addr > h.offset:
        raise ImageError("multiboot header_addr does not match the header's place in the file")
    text_offset = h.offset - (h.header_addr - h.load_addr)
    if h.load_end_addr:
        if h.load_end_addr < h.load_addr:
            raise ImageError("multiboot load_end_addr is below load_addr")
        load_size = h.load_end_addr - h.load_addr
    else:
        load_size = len(data) - text_offset  # 0 means "to the end of the file"
    if text_offset + load_size > len(data):
        raise ImageError(
            f"image is shorter than its load range ({len(data)} bytes, needs {text_offset + load_size})"
        )
    memsz = load_size
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + load_size:
            raise ImageError("multiboot bss_end_addr is below load_end_addr")
        memsz = h.bss_end_addr - h.load_addr
    if memsz == 0:
        raise ImageError("multiboot load range is empty")
    _check_in_ram(h.load_addr, h.load_addr + memsz, ram_bytes, "kernel load range")
    if not h.load_addr <= h.entry_addr < h.load_addr + load_size:
        raise ImageError(f"entry point {h.entry_addr:#x} is outside the loaded image")
    segment = LoadSegment(h.load_addr, bytes(data[text_offset : text_offset + load_size]), memsz)
    return KernelImage(h.entry_addr, (segment,), "aout-kludge")


_ELF_MAGIC = b"\x7fELF"
_ELFCLASS32 = 1
_ELFDATA2LSB = 1
_ET_EXEC = 2
_EM_386 = 3
_PT_LOAD = 1


@dataclass(frozen=True)
class _ProgramHeader:
    index: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def _load_headers(data: bytes, e_phoff: int, e_phentsize: int, e_phnum: int) -> list[_ProgramHeader]:
    """The PT_LOAD headers, each checked against the file before anything is loaded."""
    if e_phnum > MAX_PROGRAM_HEADERS:
        raise ImageError(f"ELF has {e_phnum} program headers; at most {MAX_PROGRAM_HEADERS} are accepted")
    if e_phnum and e_phentsize < 32:
        raise ImageError(f"ELF program header size {e_phentsize} is too small")
    if e_phoff + e_phnum * e_phentsize > len(data):
        raise ImageError("ELF program headers run past the end of the file")
    loads = []
    for i in range(e_phnum):
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from(
            "<6I", data, e_phoff + i * e_phentsize
        )
        if p_type != _PT_LOAD:
            continue
        if p_filesz > p_memsz:
            raise ImageError(f"ELF segment {i} has filesz > memsz")
        if p_offset + p_filesz > len(data):
            raise ImageError(f"ELF segment {i} runs past the end of the file")
        loads.append(_ProgramHeader(i, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz))
    return loads


def _drop_overlapping_tails(loads: list[_ProgramHeader]) -> list[_ProgramHeader]:
    """QEMU's rule (elf_ops.h): a zero-filled tail that overlaps another segment is not loaded.

    Some images put data meant to be copied at run time in memsz; QEMU honours memsz only when
    the zeroed part overlaps no other PT_LOAD segment (compared at their full memsz).
    """
    out = []
    for ph in loads:
        memsz = ph.memsz
        if memsz > ph.filesz:
            zero_start, zero_end = ph.paddr + ph.filesz, ph.paddr + ph.memsz
            if any(other is not ph and not (other.paddr >= zero_end or zero_start >= other.paddr + other.memsz)
                   for other in loads):
                memsz = ph.filesz
        out.append(_ProgramHeader(ph.index, ph.offset, ph.vaddr, ph.paddr, ph.filesz, memsz))
    return out


def _check_disjoint(loads: list[_ProgramHeader]) -> None:
    ordered = sorted(loads, key=lambda ph: ph.paddr)
    for low, high in zip(ordered, ordered[1:]):
        if high.paddr < low.paddr + low.memsz:
            first, second = sorted((low.index, high.index))
            raise ImageError(f"ELF segments {first} and {second} overlap in physical memory")


def _parse_elf(data: bytes, ram_bytes: int) -> KernelImage:
    if len(data) < 52:
        raise ImageError("truncated ELF header")
    if data[4] != _ELFCLASS32:
        raise ImageError("not a 32-bit ELF (give a 32-bit kernel)")
    if data[5] != _ELFDATA2LSB:
        raise ImageError("ELF is not little-endian")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != _EM_386:
        raise ImageError(f"ELF machine {e_machine} is not i386")
    if e_type != _ET_EXEC:
        raise ImageError(f"ELF type {e_type} is not an executable")
    (e_entry,) = struct.unpack_from("<I", data, 24)
    (e_phoff,) = struct.unpack_from("<I", data, 28)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 42)
    loads = _drop_overlapping_tails(_load_headers(data, e_phoff, e_phentsize, e_phnum))
    loads = [ph for ph in loads if ph.memsz]
    if not loads:
        raise ImageError("ELF has no loadable segment")
    for ph in loads:
        _check_in_ram(ph.paddr, ph.paddr + ph.memsz, ram_bytes, f"ELF segment {ph.index}")
    _check_disjoint(loads)  # so, with the check above, they total less than RAM
    entry = None
    for ph in loads:
        # A kernel linked high gives a virtual e_entry: translate it through its segment.
        if ph.paddr <= e_entry < ph.paddr + ph.memsz:
            entry = e_entry
        elif entry is None and ph.vaddr <= e_entry < ph.vaddr + ph.memsz:
            entry = e_entry - ph.vaddr + ph.paddr
    if entry is None:
        raise ImageError(f"ELF entry point {e_entry:#x} is outside every loadable segment")
    segments = tuple(LoadSegment(ph.paddr, bytes(data[ph.offset : ph.offset + ph.filesz]), ph.memsz)
                     for ph in loads)
    return KernelImage(entry, segments, "elf32")


def parse_kernel(data: bytes, ram_bytes: int) -> KernelImage:
    """Decide where a Multiboot kernel's bytes go and where it starts, as QEMU's -kernel does."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image is {len(data)} bytes; at most {MAX_IMAGE_BYTES >> 20} MiB is accepted")
    data = bytes(data)
    header = find_header(data)
    _check_flags(header.flags)
    if header.flags & FLAG_AOUT_KLUDGE:
        return _parse_aout(data, header, ram_bytes)
    if not data.startswith(_ELF_MAGIC):
        raise ImageError("multiboot header without address fields (bit 16) needs an ELF file")
    return _parse_elf(data, ram_bytes)


def memory_map(ram_bytes: int) -> list[tuple[int, int, int]]:
    """The e820 map (base, length, type) QEMU's SeaBIOS gives a PC with this much RAM."""
    below_4g = min(ram_bytes, 0xFFFC0000)  # QEMU's pc puts RAM above 3.5 GiB elsewhere; we don't
    entries = [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, EBDA_BYTES, E820_RESERVED),
        (*BIOS_ROM, E820_RESERVED),
    ]
    if below_4g > 0x100000 + TOP_RESERVED:
        entries.append((0x100000, below_4g - TOP_RESERVED - 0x100000, E820_RAM))
        entries.append((below_4g - TOP_RESERVED, TOP_RESERVED, E820_RESERVED))
    entries.append((*FLASH, E820_RESERVED))
    return entries


def multiboot_info(ram_bytes: int, base: int, cmdline: bytes = b"") -> bytes:
    """The info structure (with its memory map and command line) as it will sit at `base`.

    Pointers inside it (mmap_addr, cmdline) are physical addresses computed from `base`.
    """
    mmap = memory_map(ram_bytes)
    # Each entry is preceded by its size, which does not count the size field itself.
    mmap_blob = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in mmap)
    flags = INFO_MEMORY | INFO_MMAP
    mem_lower = LOW_RAM_END // 1024
    usable_high = next((n for b, n, t in mmap if b == 0x100000 and t == E820_RAM), 0)
    mem_upper = usable_high // 1024
    cmdline_offset = MMAP_OFFSET + len(mmap_blob)
    cmdline_addr = 0
    tail = b""
    if cmdline:
        flags |= INFO_CMDLINE
        cmdline_addr = base + cmdline_offset
        tail = cmdline.split(b"\0", 1)[0] + b"\0"
    info = struct.pack(
        "<13I",
        flags,
        mem_lower,
        mem_upper,
        0,  # boot_device: not provided (flag bit 1 clear)
        cmdline_addr,
        0,  # mods_count
        0,  # mods_addr
        0,
        0,
        0,
        0,  # syms (a.out/ELF section info): not provided
        len(mmap_blob),
        base + MMAP_OFFSET,
    )
    info = info.ljust(MMAP_OFFSET, b"\0")
    return info + mmap_blob + tail
