# paging_pf.S - a page-fault handler that reports the fault and either skips it or repairs it.
#
# Paging is on with an identity map of 0-8 MiB (PD 0x200000, page tables 0x201000 and 0x202000,
# user read/write), except for a few pages in the second 4 MiB:
#   0x400000 not present, 0x401000 supervisor read/write, 0x402000 user read-only,
#   0x403000 not present (a jump target), 0x404000 and 0x405000 not present (repaired on demand).
# The #PF handler (vector 14) prints CR2 and the error code (P=1 protection, W/R=2 write, U/S=4
# user), then either moves the frame's EIP to a resume point (the access is skipped) or writes a
# present PTE for CR2 and returns to the faulting instruction, which runs again and succeeds.
# It does not run invlpg: a not-present entry is never cached (SDM 4.10.4.3), so none is needed.
# Cases at CPL 0: read (0x0) and write (0x2) of a not-present page, a jump to a not-present page
# (0x0: the I/D bit needs NX or SMEP; CR2 and the frame EIP are both the target), a read repaired
# by the handler. From ring 3 (iretd to 0x1b, back to the kernel through `int 0x80`; the TSS
# gives the handler its stack): read (0x5) and write (0x7) of the supervisor page, a write to the
# read-only user page (0x7), a read of it (no fault), and a write repaired by the handler (0x6).
# A monitor must get this right because it sees these faults first: under shadow paging it has
# to tell its own hidden faults from the guest's, and give the guest CR2, the error code and the
# frame of the instruction the guest ran, and let the repaired PTE take effect without invlpg.

PD = 0x200000
PT0 = 0x201000
USER_STACK_TOP = 0x3ff000

main:
    mov esi, p_name
    call puts
    mov eax, 14
    mov ebx, p_pf
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x80
    mov ebx, p_back
    mov cl, 0xee                        # DPL 3: ring 3's way back to the kernel
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax

    mov dword ptr [0x402000], 0x42420000
    mov dword ptr [0x404000], 0x44440000
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0x200000], 0x201007
    mov dword ptr [0x200004], 0x202007
    mov edi, PT0
    mov eax, 0x7                        # present, write, user
    mov ecx, 0x800                      # both page tables
p_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz p_fill
    mov dword ptr [0x202000], 0         # 0x400000 not present
    mov dword ptr [0x202004], 0x401003  # supervisor read/write
    mov dword ptr [0x202008], 0x402005  # user read-only
    mov dword ptr [0x20200c], 0         # 0x403000 not present
    mov dword ptr [0x202010], 0         # 0x404000 not present
    mov dword ptr [0x202014], 0         # 0x405000 not present
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov esi, m_read_np
    call puts
    mov dword ptr [p_fixup], p_r1
    mov eax, dword ptr [0x400000]
p_r1:
    call putnl
    mov esi, m_write_np
    call puts
    mov dword ptr [p_fixup], p_r2
    mov dword ptr [0x400000], eax
p_r2:
    call putnl
    mov esi, m_fetch_np
    call puts
    mov dword ptr [p_fixup], p_r3
    mov eax, 0x403000
    jmp eax
p_r3:
    mov esi, m_frame_eip
    mov eax, dword ptr [p_eip]
    call put_kv_hex
    mov esi, m_retry
    call puts
    mov dword ptr [p_map], 0x3          # the handler maps it supervisor read/write
    mov eax, dword ptr [0x404000]
    mov esi, m_retried
    call put_kv_hex

    mov esi, m_u_read_sup
    call puts
    mov dword ptr [p_fixup], u_back
    mov ebx, u_read_sup
    call p_to_user
    call putnl
    mov esi, m_u_write_sup
    call puts
    mov ebx, u_write_sup
    call p_to_user
    call putnl
    mov esi, m_u_write_ro
    call puts
    mov ebx, u_write_ro
    call p_to_user
    call putnl
    mov esi, m_u_read_ro
    call puts
    mov ebx, u_read_ro
    call p_to_user
    mov esi, m_nofault
    mov eax, dword ptr [p_user_eax]
    call put_kv_hex
    mov esi, m_u_retry
    call puts
    mov dword ptr [p_map], 0x7          # the handler maps it user read/write
    mov ebx, u_write_retry
    call p_to_user
    mov esi, m_retried_w
    mov eax, dword ptr [0x405000]
    call put_kv_hex
    mov al, 0
    ret

# EBX = ring-3 EIP. Returns when ring 3 runs `int 0x80` (p_back), with its EAX in p_user_eax.
p_to_user:
    mov dword ptr [p_kernel_esp], esp
    mov eax, SEL_UDATA
    mov ds, eax
    mov es, eax
    push eax                            # SS
    mov eax, USER_STACK_TOP
    push eax                            # ESP
    push 0x2                            # EFLAGS: IF=0
    mov eax, SEL_UCODE
    push eax                            # CS
    push ebx                            # EIP
    iretd
p_back:
    mov ebx, SEL_KDATA
    mov ds, ebx
    mov es, ebx
    mov dword ptr [p_user_eax], eax
    mov esp, dword ptr [p_kernel_esp]
    ret

# ---- ring 3 ----
u_read_sup:
    mov eax, dword ptr [0x401000]
    int 0x80
u_write_sup:
    mov dword ptr [0x401000], eax
    int 0x80
u_write_ro:
    mov dword ptr [0x402000], eax
    int 0x80
u_read_ro:
    mov eax, dword ptr [0x402000]
    int 0x80
u_write_retry:
    mov dword ptr [0x405000], 0x55667788
u_back:
    int 0x80

# #PF: print CR2 and the error code; then map the page with the flags in p_map (and retry), or
# resume at p_fixup. Frame: error code, EIP, CS, EFLAGS (and ESP, SS from ring 3).
p_pf:
    pushad
    mov eax, ds                         # (keystone's `push ds` is a 16-bit push)
    push eax
    mov eax, es
    push eax
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov esi, p_cr2_msg
    call puts
    mov eax, cr2
    call puthex32
    mov esi, p_err_msg
    call puts
    mov eax, dword ptr [esp + 40]       # past ES, DS and 8 registers
    call puthex32
    mov eax, dword ptr [esp + 44]
    mov dword ptr [p_eip], eax
    mov ecx, dword ptr [p_map]
    test ecx, ecx
    jz p_skip
    # The PTE of CR2 is at (PD[CR2 >> 22] & ~0xfff) + (CR2 >> 12 & 0x3ff) * 4.
    mov eax, cr2
    mov ebx, eax
    shr ebx, 22
    mov ebx, dword ptr [0x200000 + ebx * 4]
    and ebx, 0xfffff000
    mov edx, eax
    shr edx, 12
    and edx, 0x3ff
    and eax, 0xfffff000
    or eax, ecx
    mov dword ptr [ebx + edx * 4], eax
    mov dword ptr [p_map], 0
    mov esi, p_mapped_msg
    call puts
    call puthex32
    jmp p_pf_done
p_skip:
    mov eax, dword ptr [p_fixup]
    mov dword ptr [esp + 44], eax
    mov esi, p_skipped_msg
    call puts
p_pf_done:
    pop eax
    mov es, eax
    pop eax
    mov ds, eax
    popad
    add esp, 4
    iretd

p_fixup:        .long 0
p_map:          .long 0
p_eip:          .long 0
p_kernel_esp:   .long 0
p_user_eax:     .long 0
p_name:         .asciz "paging_pf\n"
p_cr2_msg:      .asciz "#PF cr2 "
p_err_msg:      .asciz " error "
p_skipped_msg:  .asciz ", skipped"
p_mapped_msg:   .asciz ", mapped with PTE "
m_read_np:      .asciz "CPL 0 read of not-present 0x400000: "
m_write_np:     .asciz "CPL 0 write of not-present 0x400000: "
m_fetch_np:     .asciz "CPL 0 jmp to not-present 0x403000: "
m_frame_eip:    .asciz ", frame EIP "
m_retry:        .asciz "CPL 0 read of not-present 0x404000, handler maps it: "
m_retried:      .asciz ", retried read "
m_u_read_sup:   .asciz "ring 3 read of supervisor 0x401000: "
m_u_write_sup:  .asciz "ring 3 write of supervisor 0x401000: "
m_u_write_ro:   .asciz "ring 3 write of read-only 0x402000: "
m_u_read_ro:    .asciz "ring 3 read of read-only 0x402000: "
m_nofault:      .asciz "no fault, read "
m_u_retry:      .asciz "ring 3 write of not-present 0x405000, handler maps it: "
m_retried_w:    .asciz ", retried write, kernel reads "

.include "runtime.S"
