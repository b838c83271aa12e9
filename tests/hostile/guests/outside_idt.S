# outside_idt.S - lidt with a base outside RAM, then an interrupt through it.
#
# lidt only records a base and a limit; the CPU reads the gate when an event is delivered. On the
# bare machine 0xF0000000 reads as zeros: the lidt succeeds, and `int 0x80` finds an empty gate,
# whose #GP finds another, then #DF: a triple fault, and QEMU stops. hvsim delivers every event
# itself, reading the gate from guest memory, and raised on the read outside RAM.

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov esi, o_load
    call puts
    mov eax, o_table
    .byte 0x0f, 0x01, 0x18                      # lidt [eax]: base 0xf0000000
    mov esi, o_int
    call puts
    int 0x80
    mov esi, o_survived
    call puts
    mov al, 0
    ret

o_name:     .asciz "outside_idt\n"
o_load:     .asciz "kernel: lidt base 0xf0000000 limit 0x7ff\n"
o_int:      .asciz "kernel: int 0x80\n"
o_survived: .asciz "kernel: int 0x80 returned\n"
.balign 4, 0
    .word 0
o_table:
    .word 0x7ff
    .long 0xf0000000

.include "hostile.S"
