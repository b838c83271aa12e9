# outside_lidt_operand.S - lidt whose 6-byte operand is outside RAM.
#
# On the bare machine the operand at 0xF0000000 reads as zeros (unassigned space): IDTR becomes
# base 0, limit 0, and nothing faults until an event is delivered; the kernel puts its real IDT
# back first. Under trap lidt faults in ring 1 and the monitor's emulator read the operand from
# guest memory itself, raising on the address outside RAM.

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov esi, o_lidt
    call puts
    mov eax, 0xf0000000
    .byte 0x0f, 0x01, 0x18                      # lidt [eax]
    call idt_load                               # the real IDT again
    mov esi, o_back
    call puts
    mov al, 0
    ret

o_name: .asciz "outside_lidt_operand\n"
o_lidt: .asciz "kernel: lidt [0xf0000000]\n"
o_back: .asciz "kernel: back on the real IDT\n"

.include "hostile.S"
