# outside_gdt.S - lgdt with a base outside RAM, then a segment load through it.
#
# lgdt only records a base and a limit; the CPU reads the table at the next segment load. On the
# bare machine 0xF0000000 is unassigned space that reads as zeros, so the lgdt succeeds, the kernel
# goes back to its real GDT, and the second time a `mov ds` through the empty table is a #GP whose
# delivery needs CS 0x08 from that same table: a triple fault, and QEMU stops. Under trap the
# monitor rebuilt its shadow GDT from the new base at once and raised on the read outside RAM.

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov esi, o_load
    call puts
    mov eax, o_table
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]: base 0xf0000000
    mov esi, o_loaded
    call puts
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]: back to the real GDT
    mov esi, o_back
    call puts
    mov eax, o_table
    .byte 0x0f, 0x01, 0x10
    mov esi, o_ds
    call puts
    mov eax, SEL_KDATA
    mov ds, eax
    mov esi, o_survived
    call puts
    mov al, 0
    ret

o_name:     .asciz "outside_gdt\n"
o_load:     .asciz "kernel: lgdt base 0xf0000000 limit 0xffff\n"
o_loaded:   .asciz "kernel: loaded\n"
o_back:     .asciz "kernel: back on the real GDT\n"
o_ds:       .asciz "kernel: lgdt 0xf0000000 again, then mov ds, 0x10\n"
o_survived: .asciz "kernel: mov ds survived\n"
.balign 4, 0
    .word 0
o_table:
    .word 0xffff
    .long 0xf0000000

.include "hostile.S"
