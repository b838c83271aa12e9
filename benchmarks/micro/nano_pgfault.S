# nano_pgfault.S - nanobenchmark: K guest page faults, each a full #PF round trip, paging on.
# hvsim: paging
#
# nano_ptemod.S's loop with a not-present PTE: each iteration writes 0 to the PTE of V =
# 0x600000, runs `invlpg [V]` and reads V. The read is a #PF (CR2 = V, error code 0); the
# guest's handler (an interrupt gate, DPL 0) counts it, writes a present PTE (no invlpg needed:
# a not-present entry is never cached), pops the error code and returns with `iretd`, and the
# read runs again and reads V's 1. At the end the count must be K and the sum of the reads K
# (exit code 1 otherwise). Paired with nano_ptemod.S, so (t - t_ptemod) / K is the round trip
# alone: the delivery through the IDT, the handler, the iretd and the retried read's walk.
# Under native Unicorn raises the #PF and the monitor delivers it (one exit); under trap the
# fill finds the fault in the guest's tables, the monitor reflects it to the ring-1 handler and
# emulates its iretd (two exits, and three walks counted as shadow page faults); under hvm the
# exception bitmap does not cover #PF, so in VT-x terms it is delivered in the guest without an
# exit (hvsim's monitor still delivers it: Unicorn cannot).

K = 20000
V = 0x600000
PTE_V = 0x202800                        # paging.S: the PTE of 0x600000

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
    xor ebp, ebp                        # the sum of the values read
    xor edx, edx                        # the PTE written: not present ...
    xor esi, esi                        # ... every time (nano_ptemod.S toggles two frames)
m_loop:
    xor edx, esi
    mov dword ptr [PTE_V], edx          # unmap V
    invlpg [V]
    mov eax, dword ptr [V]              # #PF; the handler maps V; run again: 1
    add ebp, eax
    dec ecx
    jnz m_loop
    mov eax, K
    cmp ebp, eax
    jne m_wrong
    cmp dword ptr [0x300000], eax
m_wrong:
    setne al                            # exit code 1 unless K faults and K reads of 1
    ret

m_pf:                                   # count the fault, map V, retry the access
    inc dword ptr [0x300000]        # a data page: a store into the code's page would cost a retranslation
    mov dword ptr [PTE_V], 0x600007
    add esp, 4                          # the error code
    iretd

.include "paging.S"
.include "../../guests/runtime.S"
