# nano_tlbmiss_base.S - the baseline of nano_tlbmiss.S: the same loop, `nop` where it reads a page.
# hvsim: paging
#
# The CR3 reload every 128 iterations, and the misses it causes on the loop's own code, are
# nano_tlbmiss.S's too, so subtracting this loop's time leaves the K misses of the reads alone.

K = 512000
PAGES_BASE = 0x680000
PAGES_END = 0x700000                    # 128 pages

main:
    call paging_on
    mov edi, cr3
    mov ecx, K
    mov ebx, PAGES_BASE
m_loop:
    nop
    add ebx, 0x1000
    cmp ebx, PAGES_END
    jb m_next
    mov ebx, PAGES_BASE
    mov cr3, edi                        # the TLB emptied: every page misses again
m_next:
    dec ecx
    jnz m_loop
    mov al, 0
    ret

.include "paging.S"
.include "../../guests/runtime.S"
