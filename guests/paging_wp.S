# paging_wp.S - CR0.WP: may the kernel write to a read-only page?
#
# Paging is on with an identity map of 0-8 MiB (PD 0x200000, page tables 0x201000 and 0x202000,
# user read/write), except 0x400000, a supervisor read-only page (PTE 0x1), and 0x401000, a user
# read-only page (PTE 0x5). With CR0.WP clear, a CPL-0 write to a read-only page is allowed
# (the 386 behaviour): writes to both pages succeed, and the supervisor page's PTE gets A and D
# (0x61 in the low 7 bits). With CR0.WP set, the same writes are #PF with error code 0x3 (present,
# write, supervisor) and memory keeps the old value. With WP clear again, a ring-3 write to the
# read-only user page is still #PF 0x7: WP only changes what the kernel may do.
# No invlpg follows the CR0 writes: a TLB entry keeps the R/W bit, not the verdict, and WP is
# applied on each access (QEMU, whose TLB keeps the verdict, flushes on every change of WP).
# A monitor must get this right because a shadow page table cannot express "writable for the
# kernel only while WP is clear": a monitor that runs the kernel outside ring 0 must emulate WP=0
# writes to read-only pages itself (setting D in the guest's PTE), and fault them once WP is set.

PD = 0x200000
PT0 = 0x201000
USER_STACK_TOP = 0x3ff000

main:
    mov esi, w_name
    call puts
    mov eax, 14
    mov ebx, w_pf
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 0x80
    mov ebx, w_back
    mov cl, 0xee                        # DPL 3: ring 3's way back to the kernel
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax

    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    mov dword ptr [0x200000], 0x201007
    mov dword ptr [0x200004], 0x202007
    mov edi, PT0
    mov eax, 0x7
    mov ecx, 0x800                      # both page tables
w_fill:
    stosd
    add eax, 0x1000
    dec ecx
    jnz w_fill
    mov dword ptr [0x202000], 0x400001  # supervisor read-only
    mov dword ptr [0x202004], 0x401005  # user read-only
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000                  # PG; WP stays clear
    mov cr0, eax

    mov esi, m_wp0_sup
    call puts
    mov dword ptr [w_fixup], w_r1
    mov dword ptr [0x400000], 0x11111111
w_r1:
    call w_show_0x400000
    mov esi, m_pte_sup
    mov eax, dword ptr [0x202000]
    and eax, 0x7f
    call put_kv_hex
    mov esi, m_wp0_user
    call puts
    mov dword ptr [w_fixup], w_r2
    mov dword ptr [0x401000], 0x22222222
w_r2:
    call w_show_0x401000

    mov eax, cr0
    or eax, 0x10000                     # WP
    mov cr0, eax
    mov esi, m_wp1_sup
    call puts
    mov dword ptr [w_fixup], w_r3
    mov dword ptr [0x400000], 0x33333333
w_r3:
    call w_show_0x400000
    mov esi, m_wp1_user
    call puts
    mov dword ptr [w_fixup], w_r4
    mov dword ptr [0x401000], 0x44444444
w_r4:
    call w_show_0x401000

    mov eax, cr0
    and eax, 0xfffeffff                 # WP clear again
    mov cr0, eax
    mov esi, m_wp0_ring3
    call puts
    mov dword ptr [w_fixup], w_u_back
    mov ebx, w_u_write
    call w_to_user
    call w_show_0x401000
    mov al, 0
    ret

# Each case line ends with what the page holds now.
w_show_0x400000:
    mov esi, m_holds
    mov eax, dword ptr [0x400000]
    jmp put_kv_hex
w_show_0x401000:
    mov esi, m_holds
    mov eax, dword ptr [0x401000]
    jmp put_kv_hex

# EBX = ring-3 EIP; returns when ring 3 runs `int 0x80`.
w_to_user:
    mov dword ptr [w_kernel_esp], esp
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
w_back:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    mov esp, dword ptr [w_kernel_esp]
    ret

w_u_write:
    mov dword ptr [0x401000], 0x55555555
w_u_back:
    int 0x80

# #PF: print CR2 and the error code, resume at w_fixup (the write is skipped).
w_pf:
    pushad
    mov eax, ds                         # (keystone's `push ds` is a 16-bit push)
    push eax
    mov eax, SEL_KDATA
    mov ds, eax
    mov esi, w_cr2_msg
    call puts
    mov eax, cr2
    call puthex32
    mov esi, w_err_msg
    call puts
    mov eax, dword ptr [esp + 36]       # past DS and 8 registers
    call puthex32
    mov eax, dword ptr [w_fixup]
    mov dword ptr [esp + 40], eax       # the frame's EIP
    pop eax
    mov ds, eax
    popad
    add esp, 4
    iretd

w_fixup:        .long 0
w_kernel_esp:   .long 0
w_name:         .asciz "paging_wp\n"
w_cr2_msg:      .asciz "#PF cr2 "
w_err_msg:      .asciz " error "
m_holds:        .asciz "; page holds "
m_wp0_sup:      .asciz "WP=0, CPL 0 write of supervisor read-only 0x400000: no fault"
m_pte_sup:      .asciz "PTE of 0x400000 after that write (low 7 bits): "
m_wp0_user:     .asciz "WP=0, CPL 0 write of user read-only 0x401000: no fault"
m_wp1_sup:      .asciz "WP=1, CPL 0 write of supervisor read-only 0x400000: "
m_wp1_user:     .asciz "WP=1, CPL 0 write of user read-only 0x401000: "
m_wp0_ring3:    .asciz "WP=0, ring 3 write of user read-only 0x401000: "

.include "runtime.S"
