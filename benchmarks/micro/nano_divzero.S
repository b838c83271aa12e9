# nano_divzero.S - nanobenchmark: K divide errors (#DE, vector 0) taken and returned from at ring 0.
#
# `div ebx` with EBX = 0 faults before it changes anything; the handler (an interrupt gate, DPL 0)
# skips the 2-byte instruction by adding 2 to the saved EIP and returns with `iretd`. Unicorn never
# delivers an exception through the guest's IDT, so under every technique the monitor does (one
# exit per #DE); raw Unicorn cannot run this loop at all. Paired with nano_base.S (`nop`).

K = 100000

main:
    mov eax, 0
    mov ebx, nano_de
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    mov ecx, K
    xor eax, eax
    xor edx, edx
    xor ebx, ebx
m_loop:
    div ebx                             # f7 f3: 2 bytes
    dec ecx
    jnz m_loop
    mov al, 0
    ret

nano_de:
    add dword ptr [esp], 2
    iretd

.include "../../guests/runtime.S"
