# pferr.S - page faults: the error code and CR2 the CPU reports, and the Accessed/Dirty bits it sets.
#
# With two-level 32-bit paging on, the kernel builds an identity map at 0x200000 (page directory)
# and 0x201000 (the page table for 0-4 MiB, user read/write), with a few special pages:
#   0x300000 not present, 0x301000 read-only (user), 0x302000 supervisor-only, 0x303000 the A/D
#   probe (user read/write, A and D clear), 0x306000 not present (holds part of a second IDT);
#   PDE 1 is a 4 MiB PSE page at 0x400000 (supervisor, read/write, A and D clear); PDE 2 is not
#   present.
# Each case runs one access, at CPL 0 or from ring 3 (iretd to CS 0x1b, back through the fault
# handler); the #PF handler records vector, error code (P=1, W/R=2, U/S=4, I/D=0x10), CR2 and
# the frame EIP relative to the faulting instruction, then resumes the kernel. "no fault" means
# the access completed (the case then runs ud2 to come back). Cases: read and write of a
# not-present page, read through a not-present PDE, an instruction fetch from a not-present page,
# a write to the read-only page at CPL 0 with CR0.WP=0 (allowed) and WP=1 (#PF 0x3); from ring 3:
# a read (0x5) and a write (0x7) of the supervisor page, a write to the read-only page (0x7, with
# WP=1 and WP=0), a read of the not-present page (0x4) and of the supervisor 4 MiB page (0x5),
# and a read of the read-only user page (allowed). Then a fault during delivery: `int 0x80`
# through an IDT whose entry 0x80 lies on the not-present page 0x306000, at CPL 0 and from ring
# 3. And the low 7 bits of the probe page's PTE, of the 4 MiB PDE (before, after a read, after a
# write) and of PDE 0 (a page table: A set, D untouched).

PD = 0x200000
PT0 = 0x201000
IDT2 = 0x305c00                         # entries 0x80-0xff fall on page 0x306000
USER_STACK_TOP = 0x3ff000

main:
    mov esi, f_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 6
    mov ebx, f_h6
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 8
    mov ebx, f_h8
    call idt_set_gate
    mov eax, 13
    mov ebx, f_h13
    call idt_set_gate
    mov eax, 14
    mov ebx, f_h14
    call idt_set_gate
    mov eax, 0x80
    mov ebx, f_h6                       # never reached: its gate is on a not-present page
    mov cl, 0xee
    call idt_set_gate
    call idt_load

    # The second IDT: a copy of the runtime's, at IDT2 (paging is still off).
    mov esi, idt
    mov edi, IDT2
    mov ecx, 0x200
f_copy_idt:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz f_copy_idt

    # Page directory: PDE 0 -> PT0, PDE 1 = 4 MiB page at 0x400000, the rest not present.
    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
f_clear_pd:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz f_clear_pd
    mov dword ptr [0x200000], 0x201007  # PT0 | user | write | present
    mov dword ptr [0x200004], 0x400083  # 4 MiB page, supervisor, write, present, A=D=0
    # PT0: identity, user read/write, A=D=0.
    mov edi, PT0
    mov eax, 0x7
    mov ecx, 0x400
f_fill_pt:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    dec ecx
    jnz f_fill_pt
    mov dword ptr [0x201c00], 0         # 0x300000 not present
    mov dword ptr [0x201c04], 0x301005  # 0x301000 read-only, user
    mov dword ptr [0x201c08], 0x302003  # 0x302000 supervisor, read/write
    mov dword ptr [0x201c18], 0         # 0x306000 not present

    mov eax, PD
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000                  # PG, WP still clear
    mov cr0, eax
    mov eax, SEL_TSS
    ltr ax

    mov ebp, f_cases_wp0
    call f_run_cases
    mov eax, dword ptr [0x201c04]
    and eax, 0x7f
    mov esi, f_pte_ro_msg
    call put_kv_hex

    mov eax, cr0
    or eax, 0x10000                     # WP
    mov cr0, eax
    mov ebp, f_cases_wp1
    call f_run_cases

    # Accessed and Dirty: the probe page's PTE and the 4 MiB page's PDE.
    mov esi, f_pte_before
    mov eax, dword ptr [0x201c0c]
    and eax, 0x7f
    call put_kv_hex
    mov eax, dword ptr [0x303000]
    mov esi, f_pte_read
    mov eax, dword ptr [0x201c0c]
    and eax, 0x7f
    call put_kv_hex
    mov dword ptr [0x303000], eax
    mov esi, f_pte_write
    mov eax, dword ptr [0x201c0c]
    and eax, 0x7f
    call put_kv_hex
    mov esi, f_pde_before
    mov eax, dword ptr [0x200004]
    and eax, 0x7f
    call put_kv_hex
    mov eax, dword ptr [0x400000]
    mov esi, f_pde_read
    mov eax, dword ptr [0x200004]
    and eax, 0x7f
    call put_kv_hex
    mov dword ptr [0x400000], eax
    mov esi, f_pde_write
    mov eax, dword ptr [0x200004]
    and eax, 0x7f
    call put_kv_hex
    mov esi, f_pde0_msg
    mov eax, dword ptr [0x200000]
    and eax, 0x7f
    call put_kv_hex

    mov ebp, f_cases_user
    call f_run_cases
    mov eax, cr0
    and eax, 0xfffeffff                 # WP off again
    mov cr0, eax
    mov ebp, f_cases_user_wp0
    call f_run_cases

    mov eax, f_idt2_ptr
    .byte 0x0f, 0x01, 0x18              # lidt [eax]
    mov ebp, f_cases_idt
    call f_run_cases
    call idt_load
    mov al, 0
    ret

# EBP = table of (label, case routine, site) triples ending in 0: run each, print one line.
f_run_cases:
    pop dword ptr [f_return]
f_next:
    mov esi, dword ptr [ebp]
    test esi, esi
    jz f_cases_done
    call puts
    mov dword ptr [f_saved_esp], esp
    call dword ptr [ebp + 4]            # never returns: it faults, or ends in ud2
f_resume:
    cmp dword ptr [f_vector], 6
    jne f_fault
    mov esi, f_nofault_msg
    call puts
    jmp f_line_done
f_fault:
    mov esi, f_vector_msg
    call puts
    mov eax, dword ptr [f_vector]
    call putdec
    mov esi, f_error_msg
    call puts
    mov eax, dword ptr [f_error]
    call puthex32
    cmp dword ptr [f_vector], 14
    jne f_no_cr2
    mov esi, f_cr2_msg
    call puts
    mov eax, dword ptr [f_cr2]
    call puthex32
f_no_cr2:
    mov esi, f_eip_msg
    call puts
    mov eax, dword ptr [f_eip]
    sub eax, dword ptr [ebp + 8]
    call puthex32
f_line_done:
    call putnl
    add ebp, 12
    jmp f_next
f_cases_done:
    jmp dword ptr [f_return]

# ---- CPL 0 cases ----------------------------------------------------------------------------
c_read_np:
s_read_np:
    mov eax, dword ptr [0x300000]
    ud2
c_write_np:
s_write_np:
    mov dword ptr [0x300000], eax
    ud2
c_read_pde_np:
s_read_pde_np:
    mov eax, dword ptr [0x800000]
    ud2
c_fetch_np:
    mov eax, 0x300000
s_fetch_np:
    call eax
    ud2
c_write_ro:
s_write_ro:
    mov dword ptr [0x301000], eax
    ud2
c_read_sup:
s_read_sup:
    mov eax, dword ptr [0x302000]
    ud2
c_int80:
s_int80:
    int 0x80
    ud2

# ---- ring 3 cases: each kernel routine enters ring 3 at its user label ----------------------
c_u_read_sup:
    mov ebx, s_u_read_sup
    jmp f_to_user
c_u_write_sup:
    mov ebx, s_u_write_sup
    jmp f_to_user
c_u_write_ro:
    mov ebx, s_u_write_ro
    jmp f_to_user
c_u_read_np:
    mov ebx, s_u_read_np
    jmp f_to_user
c_u_read_pse:
    mov ebx, s_u_read_pse
    jmp f_to_user
c_u_read_ro:
    mov ebx, s_u_read_ro
    jmp f_to_user
c_u_int80:
    mov ebx, s_u_int80
    jmp f_to_user

# EBX = ring-3 EIP.
f_to_user:
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

s_u_read_sup:
    mov eax, dword ptr [0x302000]
    ud2
s_u_write_sup:
    mov dword ptr [0x302000], eax
    ud2
s_u_write_ro:
    mov dword ptr [0x301000], eax
    ud2
s_u_read_np:
    mov eax, dword ptr [0x300000]
    ud2
s_u_read_pse:
    mov eax, dword ptr [0x400000]
    ud2
s_u_read_ro:
    mov eax, dword ptr [0x301000]
    ud2
s_u_int80:
    int 0x80
    ud2

# ---- handlers: record, then back to f_resume in ring 0 on the saved stack --------------------
f_h6:
    push -1
    push 6
    jmp f_common
f_h8:
    push 8
    jmp f_common
f_h13:
    push 13
    jmp f_common
f_h14:
    push 14
    jmp f_common
f_common:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    pop eax
    mov dword ptr [f_vector], eax
    pop eax
    mov dword ptr [f_error], eax
    mov eax, dword ptr [esp]
    mov dword ptr [f_eip], eax
    mov eax, cr2
    mov dword ptr [f_cr2], eax
    mov esp, dword ptr [f_saved_esp]
    jmp f_resume

.balign 4, 0
f_cases_wp0:
    .long m_read_np, c_read_np, s_read_np
    .long m_write_np, c_write_np, s_write_np
    .long m_read_pde_np, c_read_pde_np, s_read_pde_np
    .long m_fetch_np, c_fetch_np, 0x300000
    .long m_write_ro_wp0, c_write_ro, s_write_ro
    .long 0, 0, 0
f_cases_wp1:
    .long m_write_ro_wp1, c_write_ro, s_write_ro
    .long m_read_sup, c_read_sup, s_read_sup
    .long 0, 0, 0
f_cases_user:
    .long m_u_read_sup, c_u_read_sup, s_u_read_sup
    .long m_u_write_sup, c_u_write_sup, s_u_write_sup
    .long m_u_write_ro, c_u_write_ro, s_u_write_ro
    .long m_u_read_np, c_u_read_np, s_u_read_np
    .long m_u_read_pse, c_u_read_pse, s_u_read_pse
    .long m_u_read_ro, c_u_read_ro, s_u_read_ro
    .long 0, 0, 0
f_cases_user_wp0:
    .long m_u_write_ro_wp0, c_u_write_ro, s_u_write_ro
    .long 0, 0, 0
f_cases_idt:
    .long m_int80, c_int80, s_int80
    .long m_u_int80, c_u_int80, s_u_int80
    .long 0, 0, 0

f_return:    .long 0
f_saved_esp: .long 0
f_vector:    .long 0
f_error:     .long 0
f_cr2:       .long 0
f_eip:       .long 0
.balign 4, 0
    .word 0
f_idt2_ptr:
    .word 0x7ff
    .long IDT2

f_name:          .asciz "pferr\n"
f_vector_msg:    .asciz "vector "
f_error_msg:     .asciz " error "
f_cr2_msg:       .asciz " cr2 "
f_eip_msg:       .asciz " eip-site "
f_nofault_msg:   .asciz "no fault"
m_read_np:       .asciz "CPL 0 read of not-present 0x300000: "
m_write_np:      .asciz "CPL 0 write of not-present 0x300000: "
m_read_pde_np:   .asciz "CPL 0 read of 0x800000 (PDE not present): "
m_fetch_np:      .asciz "CPL 0 call to not-present 0x300000: "
m_write_ro_wp0:  .asciz "CPL 0 write of read-only 0x301000, WP=0: "
m_write_ro_wp1:  .asciz "CPL 0 write of read-only 0x301000, WP=1: "
m_read_sup:      .asciz "CPL 0 read of supervisor 0x302000: "
m_u_read_sup:    .asciz "ring 3 read of supervisor 0x302000: "
m_u_write_sup:   .asciz "ring 3 write of supervisor 0x302000: "
m_u_write_ro:    .asciz "ring 3 write of read-only 0x301000, WP=1: "
m_u_read_np:     .asciz "ring 3 read of not-present 0x300000: "
m_u_read_pse:    .asciz "ring 3 read of supervisor 4 MiB page 0x400000: "
m_u_read_ro:     .asciz "ring 3 read of read-only 0x301000: "
m_u_write_ro_wp0: .asciz "ring 3 write of read-only 0x301000, WP=0: "
m_int80:         .asciz "CPL 0 int 0x80, IDT entry on not-present 0x306000: "
m_u_int80:       .asciz "ring 3 int 0x80, IDT entry on not-present 0x306000: "
f_pte_ro_msg:    .asciz "PTE of 0x301000 after the WP=0 write (low 7 bits): "
f_pte_before:    .asciz "PTE of 0x303000 before any access (low 7 bits): "
f_pte_read:      .asciz "PTE of 0x303000 after a read (low 7 bits): "
f_pte_write:     .asciz "PTE of 0x303000 after a write (low 7 bits): "
f_pde_before:    .asciz "PDE of the 4 MiB page 0x400000 before any access (low 7 bits): "
f_pde_read:      .asciz "PDE of the 4 MiB page 0x400000 after a read (low 7 bits): "
f_pde_write:     .asciz "PDE of the 4 MiB page 0x400000 after a write (low 7 bits): "
f_pde0_msg:      .asciz "PDE 0 (a page table, in use) (low 7 bits): "

.include "runtime.S"
