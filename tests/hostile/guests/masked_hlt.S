# masked_hlt.S - every PIC line masked, interrupts enabled, hlt.
#
# Nothing can ever wake this CPU: the only sources of interrupts are the PIC's lines, and all of
# them are masked (NMI is not wired to anything here). A real PC sits in hlt forever; QEMU too.
# hvsim's idle loop jumped virtual time from one PIT deadline to the next, forever, without
# counting instructions, so neither the guest nor --max-instructions could end the run. It must
# end at once with a halted_reason that says nothing can wake the guest.

main:
    mov esi, h_name
    call puts
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov esi, h_hlt
    call puts
    sti
    hlt
    mov esi, h_woke
    call puts
    mov al, 0
    ret

h_name: .asciz "masked_hlt\n"
h_hlt:  .asciz "kernel: all IRQs masked; sti; hlt\n"
h_woke: .asciz "kernel: woke up\n"

.include "hostile.S"
