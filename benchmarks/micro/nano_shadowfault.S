# nano_shadowfault.S - nanobenchmark: K hidden shadow page faults, each caused by a store to a
# guest page table, paging on.
# hvsim: paging
#
# Each iteration stores the PTE of V = 0x600000 again, with the value it already holds (present,
# writable, user, accessed, dirty: nothing for the CPU to set), then reads V. On the bare machine
# the store is plain data and the read hits the TLB. Under trap the page table is write-protected
# because the shadow was built from it (memory/shadow.py): the store goes through the alias window,
# where the monitor performs it and drops the shadow entry it covers (and the TLB), so the read is
# a hidden shadow page fault: a walk of the guest's tables that refills the shadow. Under hvm the
# store is plain data again (EPT does not care about the guest's tables). Paired with
# nano_shadowfault_base.S (the same store to a data word), so (t - t_base) / K is the cost of
# one page-table store and the hidden fault it causes.

K = 20000
V = 0x600000
PTE_V = 0x202800                        # paging.S: the PTE of 0x600000

main:
    call paging_on
    mov dword ptr [V], 1
    mov ecx, K
    xor ebp, ebp
    mov edx, 0x600067                   # V -> itself, present, writable, user, A and D set
m_loop:
    mov dword ptr [PTE_V], edx          # the page-table store
    mov eax, dword ptr [V]              # the hidden fault (trap), a TLB hit (native, hvm)
    add ebp, eax
    dec ecx
    jnz m_loop
    cmp ebp, K
    setne al                            # exit code 1 if a read saw anything but V's 1
    ret

.include "paging.S"
.include "../../guests/runtime.S"
