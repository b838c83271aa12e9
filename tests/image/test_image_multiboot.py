"""parse_kernel loads what QEMU's -kernel loads, refuses the rest with ImageError, never crashes;
multiboot_info tells a guest what QEMU 7.2 tells it."""
import os
import struct
import threading
import time
from datetime import timedelta
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
from hypervisor.image import multiboot
from hypervisor.session import load_image_bytes

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


# == hostile images: the loader's work is bounded by the machine, not by the image ==========
def elf_headers_last(phdrs, entry, body=b"\x90\xf4"):
    """An ELF whose program headers sit after the body, so any number of them leaves the
    multiboot header in the first 8 KiB; phdrs are (type, offset, vaddr, paddr, filesz, memsz)."""
    mb = struct.pack("<3I", 0x1BADB002, 0x2, (-(0x1BADB002 + 2)) & 0xFFFFFFFF)
    phoff = 52 + len(mb) + len(body)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, phoff, 0, 0, 52, 32, len(phdrs), 40, 0, 0)
    table = b"".join(struct.pack("<8I", t, off, va, pa, fs, ms, 7, 4) for t, off, va, pa, fs, ms in phdrs)
    return ehdr + mb + body + table


BODY_AT = 52 + 12            # file offset of the body in elf_headers_last


def test_five_hundred_program_headers_of_62_mib_are_refused_at_once():
    """The gap: 500 PT_LOAD headers of 62 MiB each were accepted, and loading them took 39 s."""
    code = (1, BODY_AT, 0x100000, 0x100000, 2, 0x1000)
    huge = (1, BODY_AT, 0x200000, 0x200000, 0, 62 << 20)
    data = elf_headers_last([code] + [huge] * 500, 0x100000)
    started = time.perf_counter()
    with pytest.raises(ImageError, match="501 program headers; at most 64"):
        parse_kernel(data, RAM)
    assert time.perf_counter() - started < 1


def test_overlapping_segments_are_refused_as_qemu_refuses_overlapping_roms():
    code = (1, BODY_AT, 0x100000, 0x100000, 2, 0x1000)
    huge = (1, BODY_AT, 0x200000, 0x200000, 1, 62 << 20)
    with pytest.raises(ImageError, match="ELF segments 1 and 2 overlap"):
        parse_kernel(elf_headers_last([code] + [huge] * 60, 0x100000), RAM)


def test_sixty_four_program_headers_are_accepted_and_sixty_five_refused():
    pages = [(1, BODY_AT, 0x100000 + i * 0x1000, 0x100000 + i * 0x1000, 2, 0x1000) for i in range(65)]
    image = parse_kernel(elf_headers_last(pages[:64], 0x100000), RAM)
    assert len(image.segments) == 64
    with pytest.raises(ImageError, match="65 program headers"):
        parse_kernel(elf_headers_last(pages, 0x100000), RAM)


def test_a_zero_filled_tail_that_overlaps_another_segment_is_dropped_as_qemu_does():
    """qemu-system-i386 7.2 boots this image (elf_ops.h truncates memsz to filesz)."""
    first = (1, BODY_AT, 0x100000, 0x100000, 2, 0x2000)          # its tail covers the next one
    second = (1, BODY_AT, 0x101000, 0x101000, 1, 0x1000)          # and that one's tail the first
    third = (1, BODY_AT, 0x200000, 0x200000, 1, 0x1000)           # a tail over nothing is kept
    image = parse_kernel(elf_headers_last([first, second, third], 0x100000), RAM)
    assert [(s.paddr, s.memsz) for s in image.segments] == [(0x100000, 2), (0x101000, 1), (0x200000, 0x1000)]


@pytest.mark.parametrize("phdrs, message", [
    ([(1, BODY_AT, 0x100000, 0x100000, 3, 2)], "filesz > memsz"),
    ([(1, BODY_AT, 0x100000, 0x100000, 0x10000, 0x10000)], "past the end of the file"),
    ([(1, 0xFFFFFFF0, 0x100000, 0x100000, 0x20, 0x20)], "past the end of the file"),
    ([(1, BODY_AT, 0x100000, 0x100000, 2, 0xFFFFFFFF)], "beyond RAM|wraps"),
    ([(1, BODY_AT, 0x100000, 0xFFFFF000, 2, 0x2000)], "wraps"),
    ([(1, BODY_AT, 0x100000, 0x100000, 2, 0x1000), (1, BODY_AT, 0x100000, 0x100001, 2, 2)], "overlap"),
    ([(1, BODY_AT, 0x100000, 0x100000, 0, 0)], "no loadable segment"),
])
def test_every_segment_is_checked_against_the_file_and_ram_before_anything_is_loaded(phdrs, message):
    with pytest.raises(ImageError, match=message) as info:
        parse_kernel(elf_headers_last(phdrs, 0x100000), RAM)
    assert "\n" not in str(info.value)


def test_an_image_larger_than_the_cap_is_refused_before_it_is_parsed(monkeypatch):
    monkeypatch.setattr(multiboot, "MAX_IMAGE_BYTES", 4096)
    with pytest.raises(ImageError, match="at most"):
        parse_kernel(aout_image() + bytes(4096), RAM)


def _check_sane(data, ram=RAM):
    """parse_kernel gives an ImageError, or an image whose segments are disjoint inside RAM."""
    try:
        image = parse_kernel(data, ram)
    except ImageError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(image, KernelImage)
    ranges = sorted((s.paddr, s.paddr + s.memsz) for s in image.segments)
    assert all(0x100000 <= lo < hi <= ram for lo, hi in ranges)
    assert all(a_hi <= b_lo for (_, a_hi), (b_lo, _) in zip(ranges, ranges[1:]))
    assert sum(s.memsz for s in image.segments) <= ram
    assert all(len(s.data) <= s.memsz for s in image.segments)
    assert any(s.paddr <= image.entry < s.paddr + s.memsz for s in image.segments)


_ADDRESSES = st.one_of(st.sampled_from([0, 0xFFF, 0x100000, 0x101000, RAM - 0x1000, RAM, 0xFFFFF000,
                                        0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))
_SIZES = st.one_of(st.sampled_from([0, 1, 2, 0x1000, 62 << 20, RAM, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))
_WILD_PHDR = st.tuples(st.sampled_from([0, 1, 1, 1, 2, 4, 6, 0x6474E551]), st.integers(0, BODY_AT + 80),
                       _ADDRESSES, _ADDRESSES, _SIZES, _SIZES)


@st.composite
def _linker_table(draw):
    """A program-header table a linker might write (distinct pages, data from the body), now and
    then with a wild header, an oversized tail or a stray entry point mixed in."""
    slots = draw(st.lists(st.integers(0, 300), unique=True, max_size=70))
    phdrs = []
    for slot in slots:
        skip = draw(st.integers(0, 63))
        filesz = draw(st.integers(0, 64 - skip))
        memsz = filesz + draw(st.one_of(st.integers(0, 0x1000 - filesz), st.sampled_from([0x1801, 62 << 20])))
        paddr = 0x100000 + slot * 0x1000
        phdrs.append((1, BODY_AT + skip, paddr + draw(st.sampled_from([0, 0xC0000000])), paddr, filesz, memsz))
    for _ in range(draw(st.integers(0, 2))):
        phdrs.insert(draw(st.integers(0, len(phdrs))), draw(_WILD_PHDR))
    targets = [ph[2] for ph in phdrs if ph[0] == 1] or [0x100000]
    entry = draw(st.one_of(st.sampled_from(targets), _ADDRESSES))
    return phdrs, entry


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(_linker_table())
def test_random_program_headers_give_an_image_error_or_disjoint_segments_in_ram(table):
    phdrs, entry = table
    _check_sane(elf_headers_last(phdrs, entry, body=bytes(range(64))))


@settings(max_examples=400, deadline=timedelta(milliseconds=500))
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_byte_mutations_of_a_valid_elf_give_an_image_error_or_a_sane_image(mutations):
    data = bytearray(elf_image([(0xC0100000, 0x100000, b"\x90\xf4", 0x1000),
                                (0x200000, 0x200000, b"data", 0x3000)], 0xC0100000))
    for at, value in mutations:
        data[at % len(data)] = value
    _check_sane(bytes(data))


@settings(max_examples=300, deadline=timedelta(milliseconds=500))
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=8))
def test_random_byte_mutations_of_a_valid_aout_image_give_an_image_error_or_a_sane_image(mutations):
    data = bytearray(aout_image())
    for at, value in mutations:
        data[at % len(data)] = value
    _check_sane(bytes(data))


# == reading the image file ================================================================
def test_a_character_device_is_refused_without_reading_it():
    """The gap: `hv run /dev/zero` read until the host ran out of memory (MemoryError). /dev/null
    is a character device too, and one that cannot exhaust memory if this ever regresses
    (tests/cli runs /dev/zero itself, under a memory limit)."""
    if not Path("/dev/null").is_char_device():
        pytest.skip("no /dev/null here")
    with pytest.raises(ImageError, match="character device"):
        load_image_bytes("/dev/null")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "kernel.bin"
    os.mkfifo(fifo)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_error_of(load_image_bytes, fifo)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():                      # unblock the open() so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail("load_image_bytes blocked opening a FIFO")
    assert "FIFO" in outcome[0]


def _error_of(function, *args):
    try:
        function(*args)
    except ImageError as exc:
        return str(exc)
    return "no error"


def test_a_file_larger_than_the_cap_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(multiboot.MAX_IMAGE_BYTES + 1)    # sparse: costs no disk
    started = time.perf_counter()
    with pytest.raises(ImageError, match="too big"):
        load_image_bytes(big)
    assert time.perf_counter() - started < 1


def test_a_regular_image_file_is_read_whole(tmp_path):
    image = tmp_path / "k.bin"
    image.write_bytes(aout_image())
    assert load_image_bytes(image) == aout_image()
