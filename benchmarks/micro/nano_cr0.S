# nano_cr0.S - nanobenchmark: K writes of CR0 at ring 0 (`mov cr0, eax`, the value it already has).
#
# Adams & Agesen time a CR8 write (the task priority, a 64-bit register); 32-bit x86 has no CR8,
# so this writes CR0 instead. Under native it is an ordinary instruction; under trap the kernel
# runs in ring 1, so every write is a #GP that the monitor decodes and emulates. Paired with
# nano_base.S (the same loop with `nop`).

K = 100000

main:
    mov eax, 0
    mov ebx, nano_de
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    mov ecx, K
    mov eax, cr0
m_loop:
    mov cr0, eax
    dec ecx
    jnz m_loop
    mov al, 0
    ret

nano_de:
    add dword ptr [esp], 2
    iretd

.include "../../guests/runtime.S"
