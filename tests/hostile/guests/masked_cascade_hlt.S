# masked_cascade_hlt.S - only the cascade line (IRQ2) unmasked, the slave PIC fully masked, hlt.
#
# The master PIC's IMR is not 0xFF here, yet nothing can wake the CPU either: IRQ2 only carries
# what the slave PIC passes on, and the slave masks all of its lines. A monitor that looks at the
# master's mask alone would idle forever; like masked_hlt.S, the run must end at once with a
# halted_reason that says nothing can wake the guest.

main:
    mov esi, h_name
    call puts
    mov al, 0xfb
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    mov esi, h_hlt
    call puts
    sti
    hlt
    mov esi, h_woke
    call puts
    mov al, 0
    ret

h_name: .asciz "masked_cascade_hlt\n"
h_hlt:  .asciz "kernel: only IRQ2 (the cascade) unmasked, slave all masked; sti; hlt\n"
h_woke: .asciz "kernel: woke up\n"

.include "hostile.S"
