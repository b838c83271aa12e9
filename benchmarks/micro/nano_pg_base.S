# nano_pg_base.S - the baseline of nano_ptemod.S: the same paged loop with a `nop` for each of
# the PTE write, the invlpg and the read.
# hvsim: paging
#
# Everything else (the #PF gate, the page tables, CR0.PG, the registers the loop sets and adds)
# is nano_ptemod.S's, so subtracting its time leaves the cost of the K page-table updates.

K = 20000

main:
    mov eax, 14
    mov ebx, m_pf
    mov cl, 0x8e
    call idt_set_gate
    call idt_load
    call paging_on
    mov dword ptr [0x300000], 0         # the handler's count of faults
    mov dword ptr [0x600000], 1
    mov dword ptr [0x601000], 2
    mov ecx, K
    xor ebp, ebp
    mov edx, 0x600007
    mov esi, 0x1000
m_loop:
    xor edx, esi
    nop
    nop
    nop
    add ebp, eax
    dec ecx
    jnz m_loop
    mov al, 0
    ret

m_pf:                                   # never taken
    inc dword ptr [0x300000]        # a data page: a store into the code's page would cost a retranslation
    mov dword ptr [0x202800], 0x600007
    add esp, 4
    iretd

.include "paging.S"
.include "../../guests/runtime.S"
