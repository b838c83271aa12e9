"""parse_kernel loads what QEMU's -kernel loads, refuses the rest with ImageError, never crashes;
multiboot_info tells a guest what QEMU 7.2 tells it."""
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor.errors import ImageError
from hypervisor.image import (
    BOOT_MAGIC,
    MULTIBOOT_INFO_ADDR,
    KernelImage,
    build_image,
    multiboot_info,
    parse_kernel,
)

RAM = 64 << 20
GUESTS = Path(__file__).resolve().parents[2] / "guests"


def aout_image(flags=0x00010002, header_addr=0x100000, load_addr=0x100000, load_end=None,
               bss_end=None, entry=0x100020, body=b"\x90" * 32 + b"\xf4", offset=0, checksum=None):
    size = offset + 32 + len(body)
    load_end = load_addr + size - offset if load_end is None else load_end
    bss_end = load_end if bss_end is None else bss_end
    checksum = (-(0x1BADB002 + flags)) & 0xFFFFFFFF if checksum is None else checksum
    header = struct.pack("<8I", 0x1BADB002, flags, checksum, header_addr, load_addr, load_end,
                         bss_end, entry)
    return b"\0" * offset + header + body


def elf_image(segments, entry, machine=3, eclass=1, with_header=True):
    """A minimal ELF32 executable: ELF header, program headers, then each segment's bytes."""
    phoff = 52
    data_off = phoff + 32 * len(segments)
    mb = struct.pack("<3I", 0x1BADB002, 0x2, (-(0x1BADB002 + 2)) & 0xFFFFFFFF) if with_header else b""
    data_off += len(mb)
    phdrs, blobs = b"", b""
    for vaddr, paddr, data, memsz in segments:
        phdrs += struct.pack("<8I", 1, data_off + len(blobs), vaddr, paddr, len(data), memsz, 7, 4)
        blobs += data
    ident = b"\x7fELF" + bytes([eclass, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 52, 32,
                               len(segments), 40, 0, 0)
    return ehdr + phdrs + mb + blobs


def test_built_guest_is_an_aout_kludge_image_entered_at_start():
    image = parse_kernel(build_image(GUESTS / "hello.S"), RAM)
    assert image.format == "aout-kludge"
    (segment,) = image.segments
    assert segment.paddr == 0x100000
    assert segment.paddr <= image.entry < segment.paddr + len(segment.data)


def test_aout_header_found_at_an_aligned_offset_maps_load_addr_to_the_right_file_byte():
    data = aout_image(offset=64, header_addr=0x100040, load_addr=0x100000, entry=0x100060,
                      load_end=0x100000 + 64 + 32 + 33, bss_end=0x101000)
    image = parse_kernel(data, RAM)
    assert image.entry == 0x100060
    assert image.segments[0].data == data
    assert image.segments[0].memsz == 0x1000


def test_zero_load_end_means_the_rest_of_the_file():
    data = aout_image(load_end=0, bss_end=0)
    assert parse_kernel(data, RAM).segments[0].data == data


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\0" * 100, "no multiboot header"),
    (aout_image(checksum=1), "checksum"),
    (aout_image(flags=0x00010008, checksum=(-(0x1BADB002 + 0x00010008)) & 0xFFFFFFFF), "unsupported"),
    (aout_image(load_end=0x0FFFFF), "load_end_addr"),
    (aout_image(load_end=0x200000), "shorter"),
    (aout_image(bss_end=0x100001), "bss_end_addr"),
    (aout_image(bss_end=RAM + 0x1000), "beyond RAM"),
    (aout_image(header_addr=0x0FF000, load_addr=0x0FF000, entry=0x0FF020, load_end=0x0FF041), "below 1 MiB"),
    (aout_image(header_addr=0xFFFFFFF0, load_addr=0xFFFFFFF0, entry=0xFFFFFFF8, load_end=0, bss_end=0), "wraps"),
    (aout_image(entry=0x200000), "entry point"),
    (aout_image(header_addr=0x0F0000), "header_addr"),
    (aout_image()[:20], "truncated"),
    (elf_image([], 0x100000), "no loadable segment"),
    (elf_image([(0x100000, 0x100000, b"\x90", 1)], 0x100000, machine=62), "not i386"),
    (elf_image([(0x100000, 0x100000, b"\x90", 1)], 0x100000, eclass=2), "32-bit"),
    (elf_image([(0x100000, 0x100000, b"\x90", 1)], 0x300000), "entry point"),
    (elf_image([(0x100000, 0x100000, b"\x90", 1)], 0x100000, with_header=False), "no multiboot header"),
    (aout_image(flags=0x2, checksum=(-(0x1BADB002 + 2)) & 0xFFFFFFFF), "needs an ELF"),
])
def test_malformed_images_are_refused_with_a_one_line_reason(data, message):
    with pytest.raises(ImageError, match=message) as info:
        parse_kernel(data, RAM)
    assert "\n" not in str(info.value)


def test_elf_is_loaded_by_physical_address_with_bss_and_virtual_entry_translated():
    data = elf_image([(0xC0100000, 0x100000, b"\x90\xf4", 0x1000)], 0xC0100001)
    image = parse_kernel(data, RAM)
    assert image.format == "elf32"
    assert image.entry == 0x100001
    assert image.segments[0].paddr == 0x100000
    assert image.segments[0].data == b"\x90\xf4"
    assert image.segments[0].memsz == 0x1000


def _check_result(data):
    try:
        image = parse_kernel(data, RAM)
    except ImageError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(image, KernelImage)
    for seg in image.segments:
        assert 0x100000 <= seg.paddr and seg.paddr + seg.memsz <= RAM
        assert len(seg.data) <= seg.memsz
    assert any(s.paddr <= image.entry < s.paddr + s.memsz for s in image.segments)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_give_an_image_error_or_a_sane_image(data):
    _check_result(data)


@settings(max_examples=500)
@given(st.integers(0, 7), st.integers(0, 0xFFFFFFFF), st.booleans())
def test_mutated_aout_header_fields_give_an_image_error_or_a_sane_image(field, value, fix_checksum):
    data = bytearray(aout_image())
    struct.pack_into("<I", data, 4 * field, value)
    if fix_checksum:
        magic, flags = struct.unpack_from("<II", data, 0)
        struct.pack_into("<I", data, 8, (-(magic + flags)) & 0xFFFFFFFF)
    _check_result(bytes(data))


@settings(max_examples=500)
@given(st.integers(0, 51 + 32), st.integers(0, 0xFFFFFFFF))
def test_mutated_elf_headers_give_an_image_error_or_a_sane_image(offset, value):
    data = bytearray(elf_image([(0x100000, 0x100000, b"\x90\xf4", 0x10)], 0x100000))
    data[offset:offset + 4] = value.to_bytes(4, "little")
    _check_result(bytes(data[:len(data)]))


def _decode_info(blob, base):
    fields = struct.unpack_from("<13I", blob)
    mmap_at, mmap_len = fields[12] - base, fields[11]
    entries, at = [], mmap_at
    while at < mmap_at + mmap_len:
        size, addr, length, kind = struct.unpack_from("<IQQI", blob, at)
        entries.append((addr, length, kind))
        at += size + 4
    return fields, entries


def test_info_for_64_mib_prints_what_qemu_told_the_meminfo_guest():
    """guests/expected/meminfo.txt is QEMU 7.2's answer; we must give the same one."""
    fields, entries = _decode_info(multiboot_info(RAM, MULTIBOOT_INFO_ADDR), MULTIBOOT_INFO_ADDR)
    lines = ["meminfo", f"flags & (mem|mmap): 0x{fields[0] & 0x41:08x}",
             f"mem_lower KiB: {fields[1]}", f"mem_upper KiB: {fields[2]}"]
    lines += [f"mmap base=0x{a:08x} len=0x{n:08x} type={t}" for a, n, t in entries]
    assert "\n".join(lines) + "\n" == (GUESTS / "expected" / "meminfo.txt").read_text()


@pytest.mark.parametrize("mib, upper", [(32, 31616), (64, 64384), (128, 129920)])
def test_mem_upper_scales_with_ram_as_qemu_does(mib, upper):
    fields, _ = _decode_info(multiboot_info(mib << 20, 0x9000), 0x9000)
    assert fields[2] == upper


def test_cmdline_is_placed_inside_the_blob_and_flagged():
    blob = multiboot_info(RAM, 0x9000, b"quiet")
    fields = struct.unpack_from("<13I", blob)
    assert fields[0] & 0x4
    at = fields[4] - 0x9000
    assert blob[at:at + 6] == b"quiet\0"
    assert BOOT_MAGIC == 0x2BADB002
