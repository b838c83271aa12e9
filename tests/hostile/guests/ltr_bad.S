# ltr_bad.S - the kernel loads TR with selectors the GDT does not have.
#
# Under trap `ltr` faults in ring 1 and the monitor looks the TSS descriptor up in the guest's GDT
# itself. A selector beyond the GDT limit, or one with TI set (the LDT), made that lookup raise
# inside the monitor. On the bare machine each is a #GP with the selector as error code; the kernel
# reports it and carries on (hv_setup has already loaded TR with the runtime's TSS).

main:
    call hv_setup
    mov esi, l_name
    call puts
    mov esi, l_beyond
    call puts
    mov dword ptr [fault_resume], l_1
    mov eax, 0x800
    ltr ax
l_1:
    mov esi, l_ldt
    call puts
    mov dword ptr [fault_resume], l_2
    mov eax, 0xc
    ltr ax
l_2:
    mov esi, l_done
    call puts
    mov al, 0
    ret

l_name:   .asciz "ltr_bad\n"
l_beyond: .asciz "kernel: ltr 0x800 (beyond the GDT limit)\n"
l_ldt:    .asciz "kernel: ltr 0xc (the LDT, never loaded)\n"
l_done:   .asciz "kernel: carried on\n"

.include "hostile.S"
