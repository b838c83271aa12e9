"""Self-modifying code under trap, in a page the monitor write-protects.

The runtime's GDT shares its page with the guest's code, so under trap every store into that
code goes through the write-protect hook, which performs the store itself, around QEMU's own
self-modifying-code check. The hook must drop the translated code it made stale, or the
guest runs its old instructions. (Code patched in the very block that is running is not
caught yet: README, known limits.)
"""
from pathlib import Path

import pytest

from hypervisor.image import build_image
from hypervisor.session import run_image

GUEST = """
main:
    mov esi, s_name
    call puts
    xor edi, edi
    mov ecx, 0x0
again:
    mov dword ptr [patched + 1], ecx      # rewrite the immediate of a function in another block
    call patched
    add edi, eax
    inc ecx
    cmp ecx, 0x64
    jne again
    mov eax, edi
    mov esi, s_sum
    call put_kv_dec
    mov al, 0
    ret
patched:
    .byte 0xb8
    .long 0x0
    ret
s_name: .asciz "smc\\n"
s_sum:  .asciz "sum of the patched immediates: "
.include "runtime.S"
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("smc") / "smc.S"
    runtime = Path(__file__).resolve().parents[2] / "guests" / "runtime.S"
    path.write_text(GUEST.replace('.include "runtime.S"', f'.include "{runtime}"'))
    return build_image(path)


@pytest.mark.parametrize("technique", ["native", "trap"])
def test_code_patched_in_the_gdts_page_runs_as_patched(image, technique):
    result = run_image(image, technique=technique)
    assert result.exit_code == 0, result.halted_reason
    assert result.console.decode().splitlines()[-1] == f"sum of the patched immediates: {sum(range(100))}"
