# nano_callret.S - nanobenchmark: K `call` / `ret` pairs at ring 0 (a near call to a bare `ret`).
#
# No technique here exits on either, so every technique should cost what raw Unicorn costs: the
# control row. (A binary translator pays for the indirect `ret`; trap-and-emulate does not.)
# Paired with nano_base.S (the same loop with `nop`).

K = 100000

main:
    mov eax, 0
    mov ebx, nano_de
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    mov ecx, K
m_loop:
    call nano_fn
    dec ecx
    jnz m_loop
    mov al, 0
    ret

nano_fn:
    ret

nano_de:
    add dword ptr [esp], 2
    iretd

.include "../../guests/runtime.S"
