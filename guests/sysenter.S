# sysenter.S - the fast system-call instructions: sysenter, sysexit and syscall on a 32-bit CPU.
#
# sysenter jumps to ring 0 at SYSENTER_EIP (MSR 0x176) with ESP = SYSENTER_ESP (0x175), CS =
# SYSENTER_CS (0x174) and SS = SYSENTER_CS + 8; sysexit, allowed only at CPL 0, returns to ring 3
# at EDX with ESP = ECX, CS = (SYSENTER_CS + 16) | 3 and SS = (SYSENTER_CS + 24) | 3. The
# runtime's GDT already has that layout from 0x08: ring-0 code, ring-0 data, ring-3 code, ring-3
# data. With SYSENTER_CS = 0 both raise #GP(0). syscall needs EFER.SCE, which a 32-bit kernel on
# QEMU's default CPU never sets: #UD. The cases, one line each (vector, error code, frame EIP
# relative to the instruction; "no fault" if it completed): sysenter with SYSENTER_CS = 0 at
# CPL 0 and from ring 3, sysexit with SYSENTER_CS = 0 at CPL 0, then with the MSRs set
# (read back with rdmsr) a round trip from ring 3: sysenter to the kernel's entry point, which
# records CS and SS (RPL masked off, so the lines do not depend on the ring a monitor runs the
# kernel in) and whether ESP is SYSENTER_ESP, then sysexit to ring 3, which records CS, SS and
# whether ESP is the ECX it was given, then runs sysexit itself at ring 3: #GP(0). Then syscall
# from ring 3 and at CPL 0.

SYSENTER_CS_MSR = 0x174
SYSENTER_ESP_MSR = 0x175
SYSENTER_EIP_MSR = 0x176
USER_STACK_TOP = 0x380000
USER_STACK2_TOP = 0x37f000
SE_STACK_TOP = 0x390000

main:
    mov esi, y_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 6
    mov ebx, y_h6
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 8
    mov ebx, y_h8
    call idt_set_gate
    mov eax, 13
    mov ebx, y_h13
    call idt_set_gate
    mov eax, 14
    mov ebx, y_h14
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax

    xor eax, eax                        # SYSENTER_CS = 0
    xor edx, edx
    mov ecx, SYSENTER_CS_MSR
    wrmsr
    mov ebp, y_cases_cs0
    call y_run_cases

    mov ecx, SYSENTER_CS_MSR
    mov eax, SEL_KCODE
    xor edx, edx
    wrmsr
    mov ecx, SYSENTER_ESP_MSR
    mov eax, SE_STACK_TOP
    wrmsr
    mov ecx, SYSENTER_EIP_MSR
    mov eax, y_entry
    wrmsr
    mov ecx, SYSENTER_CS_MSR
    rdmsr
    mov esi, y_rdmsr_msg
    call put_kv_hex

    mov ebp, y_cases_set
    call y_run_cases
    mov esi, y_entered_msg
    mov eax, dword ptr [y_entered]
    call put_kv_dec
    mov esi, y_k_cs_msg
    mov eax, dword ptr [y_k_cs]
    call put_kv_hex
    mov esi, y_k_ss_msg
    mov eax, dword ptr [y_k_ss]
    call put_kv_hex
    mov esi, y_k_esp_msg
    mov eax, dword ptr [y_k_esp]
    call put_kv_dec
    mov esi, y_u_cs_msg
    mov eax, dword ptr [y_u_cs]
    call put_kv_hex
    mov esi, y_u_ss_msg
    mov eax, dword ptr [y_u_ss]
    call put_kv_hex
    mov esi, y_u_esp_msg
    mov eax, dword ptr [y_u_esp]
    call put_kv_dec

    mov ebp, y_cases_syscall
    call y_run_cases
    mov al, 0
    ret

# EBP = table of (label, case routine, site) triples ending in 0: run each, print one line.
y_run_cases:
    pop dword ptr [y_return]
y_next:
    mov esi, dword ptr [ebp]
    test esi, esi
    jz y_cases_done
    call puts
    mov dword ptr [y_saved_esp], esp
    call dword ptr [ebp + 4]            # never returns: it faults, or ends in ud2
y_resume:
    mov eax, dword ptr [y_eip]
    sub eax, dword ptr [ebp + 8]
    cmp dword ptr [y_vector], 6
    jne y_fault
    cmp eax, 0                          # a #UD on the site itself is the answer, not ud2
    je y_fault
    mov esi, y_nofault_msg
    call puts
    jmp y_line_done
y_fault:
    mov esi, y_vector_msg
    call puts
    mov eax, dword ptr [y_vector]
    call putdec
    cmp dword ptr [y_error], 0xffffffff
    je y_no_error
    mov esi, y_error_msg
    call puts
    mov eax, dword ptr [y_error]
    call puthex32
y_no_error:
    mov esi, y_eip_msg
    call puts
    mov eax, dword ptr [y_eip]
    sub eax, dword ptr [ebp + 8]
    call puthex32
y_line_done:
    call putnl
    add ebp, 12
    jmp y_next
y_cases_done:
    jmp dword ptr [y_return]

# ---- the cases ------------------------------------------------------------------------------
c_sysenter_k:
s_sysenter_k:
    sysenter
    ud2
c_sysexit_k:
    mov ecx, USER_STACK_TOP
    mov edx, y_user_spin
s_sysexit_k:
    sysexit
    ud2
c_syscall_k:
s_syscall_k:
    syscall
    ud2
c_sysenter_u:
    mov ebx, s_sysenter_u
    jmp y_to_user
c_roundtrip_u:
    mov ebx, u_roundtrip
    jmp y_to_user
c_syscall_u:
    mov ebx, s_syscall_u
    jmp y_to_user

# EBX = ring-3 EIP.
y_to_user:
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

# ---- ring 3 ---------------------------------------------------------------------------------
s_sysenter_u:
    sysenter
    ud2
s_syscall_u:
    syscall
    ud2
u_roundtrip:
    sysenter                            # to y_entry at ring 0
    ud2
u_back:                                 # sysexit lands here
    mov eax, cs
    mov dword ptr [y_u_cs], eax
    mov eax, ss
    mov dword ptr [y_u_ss], eax
    cmp esp, USER_STACK2_TOP
    jne u_back_esp
    mov dword ptr [y_u_esp], 1
u_back_esp:
s_sysexit_u:
    sysexit                             # at ring 3: #GP(0)
    ud2
y_user_spin:
    ud2

# ---- ring 0: SYSENTER_EIP -------------------------------------------------------------------
y_entry:
    mov dword ptr [y_entered], 1
    mov eax, cs
    and eax, 0xfffc
    mov dword ptr [y_k_cs], eax
    mov eax, ss
    and eax, 0xfffc
    mov dword ptr [y_k_ss], eax
    cmp esp, SE_STACK_TOP
    jne y_entry_esp
    mov dword ptr [y_k_esp], 1
y_entry_esp:
    mov ecx, USER_STACK2_TOP
    mov edx, u_back
    sysexit

# ---- handlers: record, then back to y_resume in ring 0 on the saved stack --------------------
y_h6:
    push -1
    push 6
    jmp y_common
y_h8:
    push 8
    jmp y_common
y_h13:
    push 13
    jmp y_common
y_h14:
    push 14
    jmp y_common
y_common:
    mov eax, SEL_KDATA
    mov ds, eax
    mov es, eax
    pop eax
    mov dword ptr [y_vector], eax
    pop eax
    mov dword ptr [y_error], eax
    mov eax, dword ptr [esp]
    mov dword ptr [y_eip], eax
    mov esp, dword ptr [y_saved_esp]
    jmp y_resume

.balign 4, 0
y_cases_cs0:
    .long m_sysenter_k, c_sysenter_k, s_sysenter_k
    .long m_sysenter_u, c_sysenter_u, s_sysenter_u
    .long m_sysexit_k, c_sysexit_k, s_sysexit_k
    .long 0, 0, 0
y_cases_set:
    .long m_roundtrip, c_roundtrip_u, s_sysexit_u
    .long 0, 0, 0
y_cases_syscall:
    .long m_syscall_u, c_syscall_u, s_syscall_u
    .long m_syscall_k, c_syscall_k, s_syscall_k
    .long 0, 0, 0

y_return:    .long 0
y_saved_esp: .long 0
y_vector:    .long 0
y_error:     .long 0
y_eip:       .long 0
y_entered:   .long 0
y_k_cs:      .long 0xffffffff
y_k_ss:      .long 0xffffffff
y_k_esp:     .long 0
y_u_cs:      .long 0xffffffff
y_u_ss:      .long 0xffffffff
y_u_esp:     .long 0

y_name:          .asciz "sysenter\n"
y_vector_msg:    .asciz "vector "
y_error_msg:     .asciz " error "
y_eip_msg:       .asciz " eip-site "
y_nofault_msg:   .asciz "no fault"
m_sysenter_k:    .asciz "SYSENTER_CS=0: sysenter at CPL 0: "
m_sysenter_u:    .asciz "SYSENTER_CS=0: sysenter from ring 3: "
m_sysexit_k:     .asciz "SYSENTER_CS=0: sysexit at CPL 0: "
y_rdmsr_msg:     .asciz "rdmsr SYSENTER_CS after wrmsr 0x08: "
m_roundtrip:     .asciz "ring 3 sysenter, kernel sysexit, then sysexit at ring 3: "
y_entered_msg:   .asciz "sysenter reached SYSENTER_EIP: "
y_k_cs_msg:      .asciz "CS after sysenter (RPL masked): "
y_k_ss_msg:      .asciz "SS after sysenter (RPL masked): "
y_k_esp_msg:     .asciz "ESP after sysenter is SYSENTER_ESP: "
y_u_cs_msg:      .asciz "CS after sysexit: "
y_u_ss_msg:      .asciz "SS after sysexit: "
y_u_esp_msg:     .asciz "ESP after sysexit is ECX: "
m_syscall_u:     .asciz "syscall from ring 3: "
m_syscall_k:     .asciz "syscall at CPL 0: "

.include "runtime.S"
