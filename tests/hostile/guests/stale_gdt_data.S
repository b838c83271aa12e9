# stale_gdt_data.S - the kernel edits data descriptors in its GDT after lgdt, then reloads them.
#
# The CPU reads a descriptor from the GDT in memory each time a selector is loaded: lgdt only says
# where the table is. Under trap the real GDT is hvsim's shadow copy, built at lgdt, so an edit
# made afterwards must reach it before the next segment load. The kernel writes a marker at two
# places, then through FS: reads via a descriptor present at lgdt (base 0x200000); edits its base
# to 0x300000 and reloads; fills a slot that was empty at lgdt and loads it into GS; and marks the
# first descriptor not present and reloads it (#NP with the selector as error code).

MARK1 = 0x200000
MARK2 = 0x300000

main:
    call hv_setup
    mov esi, d_name
    call puts
    mov dword ptr [MARK1], 0x11111111
    mov dword ptr [MARK2], 0x22222222
    # SLOT_A: ring-0 data, base MARK1, limit 0xfffff pages.
    mov ebx, hv_gdt                             # (keystone mis-assembles [label + SYM])
    mov dword ptr [ebx + SLOT_A], 0x0000ffff
    mov dword ptr [ebx + SLOT_A + 4], 0x00cf9220
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]
    mov eax, SLOT_A
    mov fs, eax
    mov eax, dword ptr fs:[0]
    mov esi, d_before
    call put_kv_hex
    # Base 0x200000 -> 0x300000: byte 4 of the descriptor holds base bits 16-23.
    mov byte ptr [ebx + SLOT_A + 4], 0x30
    mov eax, SLOT_A
    mov fs, eax
    mov eax, dword ptr fs:[0]
    mov esi, d_after
    call put_kv_hex
    # SLOT_B was empty at lgdt: ring-0 data, base MARK2.
    mov dword ptr [ebx + SLOT_B], 0x0000ffff
    mov dword ptr [ebx + SLOT_B + 4], 0x00cf9230
    mov dword ptr [fault_resume], d_1
    mov eax, SLOT_B
    mov gs, eax
    mov eax, dword ptr gs:[0]
    mov esi, d_new
    call put_kv_hex
d_1:
    # SLOT_A not present (access byte 0x92 -> 0x12).
    mov byte ptr [ebx + SLOT_A + 5], 0x12
    mov esi, d_np
    call puts
    mov dword ptr [fault_resume], d_2
    mov eax, SLOT_A
    mov fs, eax
    mov esi, d_np_loaded
    call puts
d_2:
    mov al, 0
    ret

d_name:      .asciz "stale_gdt_data\n"
d_before:    .asciz "kernel: through the descriptor as loaded by lgdt: "
d_after:     .asciz "kernel: after editing its base and reloading fs: "
d_new:       .asciz "kernel: through a slot filled after lgdt: "
d_np:        .asciz "kernel: marking it not present and reloading fs\n"
d_np_loaded: .asciz "kernel: fs loaded a not-present descriptor\n"

.include "hostile.S"
