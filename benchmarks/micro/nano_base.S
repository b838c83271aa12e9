# nano_base.S - the shared baseline of the ring-0 nanobenchmarks (nano_cr0, nano_callret,
# nano_divzero): the same K-iteration loop with a `nop` where they have their operation.
#
# (wall(nano_X) - wall(nano_base)) / K is the cost of one operation X. The IDT set-up the #DE
# loop needs is done here too, so the two runs differ in the loop body alone.

K = 100000

main:
    mov eax, 0
    mov ebx, nano_de
    mov cl, 0x8e                        # 32-bit interrupt gate, DPL 0
    call idt_set_gate
    call idt_load
    mov ecx, K
m_loop:
    nop
    dec ecx
    jnz m_loop
    mov al, 0
    ret

nano_de:
    add dword ptr [esp], 2
    iretd

.include "../../guests/runtime.S"
