# nano_shadowfault_base.S - the baseline of nano_shadowfault.S: the same loop, its store to a data
# word instead of a page table.
# hvsim: paging
#
# Everything else is nano_shadowfault.S's, so subtracting its time leaves the cost of the K
# page-table stores and the hidden faults they cause.

K = 20000
V = 0x600000
DATA = 0x300000                         # a data page, no page table

main:
    call paging_on
    mov dword ptr [V], 1
    mov ecx, K
    xor ebp, ebp
    mov edx, 0x600067                   # V -> itself, present, writable, user, A and D set
m_loop:
    mov dword ptr [DATA], edx           # a store to a data word: nothing depends on it
    mov eax, dword ptr [V]              # a TLB hit everywhere
    add ebp, eax
    dec ecx
    jnz m_loop
    cmp ebp, K
    setne al                            # exit code 1 if a read saw anything but V's 1
    ret

.include "paging.S"
.include "../../guests/runtime.S"
