"""A guest that misbehaves is a result, not a VMM crash: runaway and triple fault."""
import textwrap

import pytest

from hypervisor.image import build_image
from hypervisor.session import run_image


def guest(tmp_path, body: str) -> bytes:
    src = tmp_path / "g.S"
    src.write_text(textwrap.dedent("_start:\n" + body))
    return build_image(src)


@pytest.mark.parametrize("technique", ["native", "trap"])
def test_runaway_guest_stops_exactly_at_max_instructions(tmp_path, technique):
    image = guest(tmp_path, "l: inc eax\n jmp l\n")
    result = run_image(image, technique=technique, max_instructions=100_001)
    assert result.halted_reason.startswith("runaway")
    assert result.instructions == 100_001


@pytest.mark.parametrize("technique", ["native", "trap"])
def test_triple_fault_is_reported_with_its_eip(tmp_path, technique):
    # An empty IDT (limit 0): the #DE cannot be delivered, nor the #GP, nor the #DF.
    image = guest(tmp_path, """
        mov eax, idtr
        .byte 0x0f, 0x01, 0x18
        xor ecx, ecx
    site:
        div ecx
        hlt
    idtr: .word 0
        .long 0
    """)
    result = run_image(image, technique=technique)
    assert "triple fault" in result.halted_reason
    assert "EIP 0x0010" in result.halted_reason


@pytest.mark.parametrize("technique", ["native", "trap"])
def test_paging_on_with_an_empty_page_directory_faults_on_the_next_fetch(tmp_path, technique):
    """The fetch after ``mov cr0`` finds no page: #PF, and with an empty IDT a triple fault,
    under the shadow (trap) as on the CPU's own walker (native)."""
    image = guest(tmp_path, """
        mov eax, idtr
        .byte 0x0f, 0x01, 0x18
        mov eax, pd
        mov cr3, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        hlt
    idtr: .word 0
        .long 0
    .balign 4096, 0
    pd: .fill 4096, 1, 0
    """)
    result = run_image(image, technique=technique)
    assert "triple fault" in result.halted_reason


def test_trap_refuses_pae_paging_with_a_clear_error(tmp_path):
    from hypervisor.errors import UnsupportedGuest
    image = guest(tmp_path, """
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        hlt
    """)
    with pytest.raises(UnsupportedGuest, match="PAE"):
        run_image(image, technique="trap")
