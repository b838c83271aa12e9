# outside_lgdt_operand.S - lgdt whose 6-byte operand is outside RAM.
#
# On the bare machine the operand at 0xF0000000 reads as zeros (unassigned space): GDTR becomes
# base 0, limit 0, and nothing faults until a segment is loaded; the kernel puts its real GDT back
# first. Under trap lgdt faults in ring 1 and the monitor's emulator read the operand from guest
# memory itself, raising on the address outside RAM.

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov esi, o_lgdt
    call puts
    mov eax, 0xf0000000
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]
    mov eax, hv_gdt_ptr
    .byte 0x0f, 0x01, 0x10                      # lgdt [eax]: the real GDT again
    mov esi, o_back
    call puts
    mov al, 0
    ret

o_name: .asciz "outside_lgdt_operand\n"
o_lgdt: .asciz "kernel: lgdt [0xf0000000]\n"
o_back: .asciz "kernel: back on the real GDT\n"

.include "hostile.S"
