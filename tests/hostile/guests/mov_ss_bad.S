# mov_ss_bad.S - the kernel loads SS with selectors the GDT does not have.
#
# Under trap `mov ss` and `pop ss` with an RPL-0 selector fault in ring 1 and the monitor loads SS
# itself, after looking the selector up in the guest's GDT. A selector beyond the GDT limit, or one
# with TI set (the LDT, which this guest never loaded), made that lookup raise inside the monitor.
# On the bare machine each is a #GP with the selector as error code; the kernel reports it and
# carries on.

main:
    call hv_setup
    mov esi, m_name
    call puts
    mov esi, m_beyond
    call puts
    mov dword ptr [fault_resume], m_1
    mov eax, 0x800
    mov ss, eax
m_1:
    mov esi, m_ldt
    call puts
    mov dword ptr [fault_resume], m_2
    mov eax, 0xc
    mov ss, eax
m_2:
    mov esi, m_pop
    call puts
    mov dword ptr [fault_resume], m_3
    push 0x800
    pop ss
m_3:
    add esp, 4                          # the pop faulted: the selector is still on the stack
    mov esi, m_ss
    mov eax, ss
    and eax, 0xfffc                     # (the RPL is the real ring: 1 under trap)
    call put_kv_hex
    mov al, 0
    ret

m_name:   .asciz "mov_ss_bad\n"
m_beyond: .asciz "kernel: mov ss, 0x800 (beyond the GDT limit)\n"
m_ldt:    .asciz "kernel: mov ss, 0xc (the LDT, never loaded)\n"
m_pop:    .asciz "kernel: pop ss of 0x800\n"
m_ss:     .asciz "kernel: ss selector is still "

.include "hostile.S"
