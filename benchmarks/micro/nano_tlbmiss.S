# nano_tlbmiss.S - nanobenchmark: K TLB misses, each a walk of the guest's page tables, paging on.
# hvsim: paging
#
# The loop reads one word from each of 128 distinct pages (0x680000-0x6fffff) in turn and,
# after the last, reloads CR3 with its own value: the reload empties the TLB (every entry: the
# map has no global pages), so every read is a miss that a page walk must answer. Under native
# Unicorn's MMU walks the tables; under trap the C fill answers from the cached shadow of the
# address space, which a reload of the same CR3 keeps (the first pass over the pages fills it:
# 128 hidden faults, then none); under hvm the same fill walks the guest's own CR3 and checks the
# EPT. Paired with nano_tlbmiss_base.S
# (a `nop` for the read, the same CR3 reloads), so (t - t_base) / K is the cost of one miss.
#
# The pages sit where Unicorn's TLB (QEMU's softmmu: 256 entries to start with, indexed by the
# low bits of the page number) keeps them apart from the loop's code and stack at 1 MiB:
# 0x680-0x6ff use slots 0x80-0xff, the kernel's pages 0x100-0x10f slots 0x00-0x0f.

K = 512000
PAGES_BASE = 0x680000
PAGES_END = 0x700000                    # 128 pages

main:
    call paging_on
    mov edi, cr3
    mov ecx, K
    mov ebx, PAGES_BASE
m_loop:
    mov eax, dword ptr [ebx]            # touch: a TLB miss
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
