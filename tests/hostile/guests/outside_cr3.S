# outside_cr3.S - CR3 outside RAM, then paging on.
#
# The first instruction fetch after setting CR0.PG walks a page directory at 0xF0000000. On the
# bare machine that is unassigned space reading as zeros: not present, a #PF, whose delivery
# needs the IDT through the same empty tables, then #DF: a triple fault, and QEMU stops.
# hvsim walks the guest's page tables itself to deliver that #PF, and raised on the read outside
# RAM. (trap does not run paged guests yet and may decline this one up front.)

main:
    call hv_setup
    mov esi, o_name
    call puts
    mov eax, 0xf0000000
    mov cr3, eax
    mov esi, o_cr3
    call puts
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov esi, o_survived
    call puts
    mov al, 0
    ret

o_name:     .asciz "outside_cr3\n"
o_cr3:      .asciz "kernel: cr3 = 0xf0000000, paging on\n"
o_survived: .asciz "kernel: still running with paging on\n"

.include "hostile.S"
