# taskgate_bad.S - task switches that fail: the fault, its error code, and which task it lands in.
#
# Paging on (PD 0x200000; a page table for 0-4 MiB, identity, user read/write, with 0x300000 not
# present; 4 MiB pages above), TR = 0x28 (the runtime's TSS, the main task). The GDT adds:
#   0x30 a TSS with limit 0x66 (one byte short)      0x38 a TSS, not present
#   0x40 a TSS whose DS is 0x1234 (no LDT)           0x48 a TSS whose EIP is past its CS's limit
#   0x50 a TSS at 0x300000 (a not-present page)      0x58 ring-0 code with limit 0xfff
#   0x60 a ring-3 TSS whose stack is on 0x300000     0x68 a task gate to 0x30, not present
#   0x70 an available TSS for a task that records it was entered, then comes back
# Each case runs one instruction; the handlers (interrupt gates for vectors 6, 8, 10-14) record
# vector, error code, frame EIP and CR2 and the task (TR) they run in, then come back to the
# main task at ring 0: directly when they run in it, else by a jmp to its TSS. One line per
# case: vector, error code, frame EIP minus the site (the faulting instruction, or the new
# task's first instruction when the fault is the new task's), CR2 for a #PF, and TR.
# Through the IDT (hvsim's own task switch): int 0x40 through a not-present task gate (#NP
# 0x202); task gates to the short TSS (#TS), the not-present TSS (#NP), the busy main TSS
# (#GP), an LDT selector (#TS), a selector past the GDT limit (#GP), a data segment (#GP), the
# TSS on a not-present page (#PF reading it, in the main task); to the TSS with DS 0x1234
# (#TS(0x1234) in the new task, EIP on its first instruction) and to the TSS with EIP past CS's
# limit (#GP(0) in the new task); #GP through a task gate to the short TSS (#TS while delivering
# #GP: #DF); #GP through a task gate to the ring-3 task (the error code push faults: #PF in the
# new task, at ring 3, through the ring-0 gate and that task's esp0); from ring 3, `int 0x4a`
# through a DPL-0 task gate (QEMU 7.2 does not check a task gate's DPL: the switch happens)
# and `int 0x4b` through a not-present DPL-0 interrupt gate (#GP: the DPL check comes first).
# Through instructions (Unicorn's task switch): jmp to the short TSS, to the not-present TSS,
# through the not-present GDT task gate, call to the busy main TSS, iret with NT set and a
# back link to an available TSS (#TS), and jmp to the TSS with DS 0x1234.
# hvsim: task-switch (hardware task switches, named with str: the conformance test compares this
# guest with QEMU under native and hvm; under trap str shows the monitor's TR)

PD = 0x200000
PT0 = 0x201000
USER_STACK_TOP = 0x3ff000

main:
    mov esi, t_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov ebx, t_h6
    mov eax, 6
    mov cl, 0x8e
    call idt_set_gate
    mov ebx, t_h8
    mov eax, 8
    call idt_set_gate
    mov ebx, t_h10
    mov eax, 10
    call idt_set_gate
    mov ebx, t_h11
    mov eax, 11
    call idt_set_gate
    mov ebx, t_h12
    mov eax, 12
    call idt_set_gate
    mov ebx, t_h13
    mov eax, 13
    call idt_set_gate
    mov ebx, t_h14
    mov eax, 14
    call idt_set_gate
    mov ebx, t_recorder                 # vector 0x4b: a DPL-0 interrupt gate, not present
    mov eax, 0x4b
    mov cl, 0x0e
    call idt_set_gate
    mov esi, t_task_gates               # vectors 0x40-0x4a: task gates
t_gates:
    mov eax, dword ptr [esi]
    cmp eax, -1
    je t_gates_done
    mov ebx, dword ptr [esi + 4]
    lea edi, [idt + eax * 8]
    mov dword ptr [edi], ebx            # offset 0, selector << 16
    mov ebx, dword ptr [esi + 8]
    mov dword ptr [edi + 4], ebx        # P, DPL, type 5
    add esi, 12
    jmp t_gates
t_gates_done:
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors, TSS included
    mov edi, t_gdt
    mov ecx, 0xc
t_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz t_copy
    mov edi, t_gdt + 0x30
    mov eax, t_tss_a
    mov ecx, 0x66
    mov dl, 0x89
    call t_tss_descriptor
    mov edi, t_gdt + 0x38
    mov eax, t_tss_a
    mov ecx, 0x67
    mov dl, 0x09                        # not present
    call t_tss_descriptor
    mov edi, t_gdt + 0x40
    mov eax, t_tss_a
    mov dl, 0x89
    call t_tss_descriptor
    mov edi, t_gdt + 0x48
    mov eax, t_tss_b
    call t_tss_descriptor
    mov edi, t_gdt + 0x50
    mov eax, 0x300000
    call t_tss_descriptor
    mov edi, t_gdt + 0x60
    mov eax, t_tss_c
    call t_tss_descriptor
    mov edi, t_gdt + 0x70
    mov eax, t_tss_d
    call t_tss_descriptor
    mov eax, t_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    mov eax, 0x28
    ltr ax

    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
t_clear_pd:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz t_clear_pd
    mov dword ptr [0x200000], 0x201007  # PT0, user, write, present
    mov dword ptr [0x200004], 0x400087  # 4 MiB pages, user, write, present
    mov dword ptr [0x200008], 0x800087
    mov dword ptr [0x20000c], 0xc00087
    mov edi, PT0
    mov eax, 0x7
    mov ecx, 0x400
t_fill_pt:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    dec ecx
    jnz t_fill_pt
    mov dword ptr [0x201c00], 0         # 0x300000 not present
    mov eax, PD
    mov cr3, eax
    mov dword ptr [tss + 0x1c], eax     # the main task's CR3, for the way back
    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov ebp, t_cases
t_next:
    mov esi, dword ptr [ebp]
    test esi, esi
    jz t_done
    call puts
    mov dword ptr [t_saved_esp], esp
    call dword ptr [ebp + 4]            # never returns: it faults, or ends in ud2
t_resume:
    pushfd                              # (an iret case leaves NT set; the next iretd must not see it)
    and dword ptr [esp], 0xffffbfff
    popfd
    call t_report
    add ebp, 12
    jmp t_next
t_done:
    clts
    mov al, 0
    ret

# EDI = GDT slot, EAX = base, ECX = limit, DL = access byte. Preserves EAX, ECX, EDX.
t_tss_descriptor:
    push eax
    mov word ptr [edi], cx
    mov word ptr [edi + 2], ax
    shr eax, 0x10
    mov byte ptr [edi + 4], al
    mov byte ptr [edi + 5], dl
    mov byte ptr [edi + 6], 0
    mov byte ptr [edi + 7], ah
    pop eax
    ret

# EDI = TSS, EAX = EIP, EBX = ESP: a ring-0 task with flat segments and the main task's CR3.
t_init_tss:
    push eax
    push ecx
    push edi
    mov ecx, 0x1a
    xor eax, eax
t_init_clear:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz t_init_clear
    pop edi
    pop ecx
    pop eax
    mov dword ptr [edi + 0x1c], PD
    mov dword ptr [edi + 0x20], eax
    mov dword ptr [edi + 0x24], 0x2
    mov dword ptr [edi + 0x38], ebx
    mov dword ptr [edi + 0x48], 0x10
    mov dword ptr [edi + 0x4c], 0x08
    mov dword ptr [edi + 0x50], 0x10
    mov dword ptr [edi + 0x54], 0x10
    mov dword ptr [edi + 0x58], 0x10
    mov dword ptr [edi + 0x5c], 0x10
    mov word ptr [edi + 0x66], 0x68
    ret

t_report:
    cmp dword ptr [t_vector], 6
    jne t_fault
    mov esi, t_nofault_msg
    call puts
    jmp t_line_done
t_fault:
    cmp dword ptr [t_vector], 0xff
    jne t_real_fault
    mov esi, t_entered_msg
    call puts
    jmp t_line_done
t_real_fault:
    mov esi, t_vector_msg
    call puts
    mov eax, dword ptr [t_vector]
    call putdec
    mov esi, t_error_msg
    call puts
    mov eax, dword ptr [t_error]
    call puthex32
    mov esi, t_eip_msg
    call puts
    mov eax, dword ptr [t_eip]
    sub eax, dword ptr [ebp + 8]
    call puthex32
    cmp dword ptr [t_vector], 14
    jne t_no_cr2
    mov esi, t_cr2_msg
    call puts
    mov eax, dword ptr [t_cr2]
    call puthex32
t_no_cr2:
    mov esi, t_tr_msg
    call puts
    mov eax, dword ptr [t_tr]
    call puthex32
t_line_done:
    jmp putnl

# ---- the cases ---------------------------------------------------------------------------------
c_gate_np:
s_gate_np:
    int 0x40
    ud2
c_short:
s_short:
    int 0x41
    ud2
c_np:
s_np:
    int 0x42
    ud2
c_busy:
s_busy:
    int 0x43
    ud2
c_ldt:
s_ldt:
    int 0x44
    ud2
c_beyond:
s_beyond:
    int 0x45
    ud2
c_data:
s_data:
    int 0x46
    ud2
c_tss_page:
s_tss_page:
    int 0x49
    ud2
c_bad_ds:
    mov edi, t_tss_a
    mov eax, s_bad_ds
    mov ebx, t_stack_a_top
    call t_init_tss
    mov dword ptr [t_tss_a + 0x54], 0x1234      # DS: TI set, and there is no LDT
    int 0x47
    ud2
c_eip_limit:
    mov edi, t_tss_b
    mov eax, s_eip_limit
    mov ebx, t_stack_b_top
    call t_init_tss
    mov dword ptr [t_tss_b + 0x4c], 0x58        # CS: limit 0xfff, the guest runs at 1 MiB
    int 0x48
    ud2
c_df:
    mov edi, idt + 0x68                 # vector 13: a task gate to the short TSS
    mov dword ptr [edi], 0x00300000
    mov dword ptr [edi + 4], 0x00008500
    mov eax, 0x1234
s_df:
    mov es, eax
    ud2
c_push_pf:
    mov edi, t_tss_c
    mov eax, s_push_pf
    mov ebx, 0x301000                   # the first push lands on the not-present page
    call t_init_tss
    mov dword ptr [t_tss_c + 0x4], t_stack_c_top   # esp0, ss0: the ring-0 stack for the #PF
    mov dword ptr [t_tss_c + 0x8], 0x10
    mov dword ptr [t_tss_c + 0x48], 0x23
    mov dword ptr [t_tss_c + 0x4c], 0x1b
    mov dword ptr [t_tss_c + 0x50], 0x23
    mov dword ptr [t_tss_c + 0x54], 0x23
    mov dword ptr [t_tss_c + 0x58], 0x23
    mov dword ptr [t_tss_c + 0x5c], 0x23
    mov edi, idt + 0x68                 # vector 13: a task gate to the ring-3 task
    mov dword ptr [edi], 0x00600000
    mov dword ptr [edi + 4], 0x00008500
    mov eax, 0x1234
    mov es, eax
    ud2
s_push_pf:
    ud2
c_user_task_gate:
    mov edi, t_tss_d
    mov eax, t_recorder
    mov ebx, t_stack_d_top
    call t_init_tss
    mov ebx, s_user_task_gate
    jmp t_to_user
c_user_int_np:
    mov ebx, s_user_int_np
    jmp t_to_user
c_jmp_short:
s_jmp_short:
    .byte 0xea; .long 0; .word 0x30
    ud2
c_jmp_np:
s_jmp_np:
    .byte 0xea; .long 0; .word 0x38
    ud2
c_jmp_gate_np:
s_jmp_gate_np:
    .byte 0xea; .long 0; .word 0x68
    ud2
c_call_busy:
s_call_busy:
    .byte 0x9a; .long 0; .word 0x28
    ud2
c_iret_link:
    mov edi, t_tss_d
    mov eax, t_recorder
    mov ebx, t_stack_d_top
    call t_init_tss
    mov word ptr [tss], 0x70            # the back link: an available TSS, not a busy one
    pushfd
    or dword ptr [esp], 0x4000          # NT
    popfd
s_iret_link:
    iretd
c_jmp_bad_ds:
    mov edi, t_tss_a
    mov eax, s_jmp_bad_ds
    mov ebx, t_stack_a_top
    call t_init_tss
    mov dword ptr [t_tss_a + 0x54], 0x1234
    .byte 0xea; .long 0; .word 0x40
    ud2

# The first instructions of tasks whose switch faults before they run.
s_bad_ds:
    ud2
s_eip_limit:
    ud2
s_jmp_bad_ds:
    ud2

# EBX = ring-3 EIP.
t_to_user:
    mov eax, 0x23
    mov ds, eax
    mov es, eax
    push eax                            # SS
    mov eax, USER_STACK_TOP
    push eax                            # ESP
    push 0x2                            # EFLAGS: IF=0
    mov eax, 0x1b
    push eax                            # CS
    push ebx                            # EIP
    iretd
s_user_task_gate:
    int 0x4a
    ud2
s_user_int_np:
    int 0x4b
    ud2

# A task that only records that it ran: vector 0xff, the main task's saved EIP as frame EIP.
t_recorder:
    mov dword ptr [t_vector], 0xff
    mov eax, dword ptr [tss + 0x20]
    mov dword ptr [t_eip], eax
    jmp t_back_to_main

# ---- handlers ------------------------------------------------------------------------------------
t_h6:
    push 0
    push 6
    jmp t_common
t_h8:
    push 8
    jmp t_common
t_h10:
    push 10
    jmp t_common
t_h11:
    push 11
    jmp t_common
t_h12:
    push 12
    jmp t_common
t_h13:
    push 13
    jmp t_common
t_h14:
    push 14
    jmp t_common
t_common:
    push eax
    mov eax, 0x10                       # DS and ES may be what a failed switch left
    mov ds, eax
    mov es, eax
    pop eax
    pop dword ptr [t_vector]
    pop dword ptr [t_error]
    pop dword ptr [t_eip]
    mov eax, cr2
    mov dword ptr [t_cr2], eax
    mov edi, idt + 0x68                 # vector 13 back to its interrupt gate
    mov eax, t_h13
    mov word ptr [edi], ax
    mov word ptr [edi + 2], 0x08
    mov word ptr [edi + 4], 0x8e00
    shr eax, 0x10
    mov word ptr [edi + 6], ax
    mov word ptr [tss], 0               # the main TSS's back link, as it was
t_back_to_main:
    str eax
    mov dword ptr [t_tr], eax
    cmp eax, 0x28
    jne t_other_task
    mov esp, dword ptr [t_saved_esp]
    jmp t_resume
t_other_task:
    # The main task is busy (the switch nested the new one in it): free it, point its TSS at
    # t_resume at ring 0, and jump to it.
    mov dword ptr [tss + 0x20], t_resume
    mov dword ptr [tss + 0x24], 0x2
    mov eax, dword ptr [t_saved_esp]
    mov dword ptr [tss + 0x38], eax
    mov dword ptr [tss + 0x48], 0x10
    mov dword ptr [tss + 0x4c], 0x08
    mov dword ptr [tss + 0x50], 0x10
    mov dword ptr [tss + 0x54], 0x10
    mov dword ptr [tss + 0x58], 0x10
    mov dword ptr [tss + 0x5c], 0x10
    and byte ptr [t_gdt + 0x2d], 0xfd
    .byte 0xea; .long 0; .word 0x28

.balign 4, 0
t_task_gates:                           # vector, (selector << 16), access << 8
    .long 0x40, 0x00300000, 0x00000500  # not present
    .long 0x41, 0x00300000, 0x00008500  # the short TSS
    .long 0x42, 0x00380000, 0x00008500  # the not-present TSS
    .long 0x43, 0x00280000, 0x00008500  # the main TSS, busy
    .long 0x44, 0x003c0000, 0x00008500  # an LDT selector
    .long 0x45, 0x00800000, 0x00008500  # past the GDT limit
    .long 0x46, 0x00100000, 0x00008500  # a data segment
    .long 0x47, 0x00400000, 0x00008500  # DS 0x1234
    .long 0x48, 0x00480000, 0x00008500  # EIP past CS's limit
    .long 0x49, 0x00500000, 0x00008500  # the TSS on a not-present page
    .long 0x4a, 0x00700000, 0x00008500  # DPL 0, entered from ring 3
    .long -1

t_cases:
    .long m_gate_np, c_gate_np, s_gate_np
    .long m_short, c_short, s_short
    .long m_np, c_np, s_np
    .long m_busy, c_busy, s_busy
    .long m_ldt, c_ldt, s_ldt
    .long m_beyond, c_beyond, s_beyond
    .long m_data, c_data, s_data
    .long m_tss_page, c_tss_page, s_tss_page
    .long m_bad_ds, c_bad_ds, s_bad_ds
    .long m_eip_limit, c_eip_limit, s_eip_limit
    .long m_df, c_df, s_df
    .long m_push_pf, c_push_pf, s_push_pf
    .long m_user_task_gate, c_user_task_gate, s_user_task_gate
    .long m_user_int_np, c_user_int_np, s_user_int_np
    .long m_jmp_short, c_jmp_short, s_jmp_short
    .long m_jmp_np, c_jmp_np, s_jmp_np
    .long m_jmp_gate_np, c_jmp_gate_np, s_jmp_gate_np
    .long m_call_busy, c_call_busy, s_call_busy
    .long m_iret_link, c_iret_link, s_iret_link
    .long m_jmp_bad_ds, c_jmp_bad_ds, s_jmp_bad_ds
    .long 0, 0, 0

t_saved_esp: .long 0
t_vector:    .long 0
t_error:     .long 0
t_eip:       .long 0
t_cr2:       .long 0
t_tr:        .long 0

.balign 8, 0
t_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0, 0                          # 0x30 TSS, limit 0x66
    .long 0, 0                          # 0x38 TSS, not present
    .long 0, 0                          # 0x40 TSS with DS 0x1234
    .long 0, 0                          # 0x48 TSS with EIP past CS's limit
    .long 0, 0                          # 0x50 TSS on a not-present page
    .long 0x00000fff, 0x00409a00        # 0x58 ring-0 code, limit 0xfff (bytes)
    .long 0, 0                          # 0x60 ring-3 TSS, stack on a not-present page
    .long 0x00300000, 0x00000500        # 0x68 task gate to 0x30, not present
    .long 0, 0                          # 0x70 the recorder's TSS
t_gdt_end:
.balign 4, 0
    .word 0
t_gdt_ptr:
    .word t_gdt_end - t_gdt - 1
    .long t_gdt
.balign 16, 0
t_tss_a:
    .fill 0x68, 1, 0
.balign 16, 0
t_tss_b:
    .fill 0x68, 1, 0
.balign 16, 0
t_tss_c:
    .fill 0x68, 1, 0
.balign 16, 0
t_tss_d:
    .fill 0x68, 1, 0
.balign 16, 0
t_stack_a:
    .fill 0x400, 1, 0
t_stack_a_top:
t_stack_b:
    .fill 0x400, 1, 0
t_stack_b_top:
t_stack_c:
    .fill 0x400, 1, 0
t_stack_c_top:
t_stack_d:
    .fill 0x400, 1, 0
t_stack_d_top:

t_name:           .asciz "taskgate_bad\n"
t_vector_msg:     .asciz "vector "
t_error_msg:      .asciz " error "
t_eip_msg:        .asciz " eip-site "
t_cr2_msg:        .asciz " cr2 "
t_tr_msg:         .asciz " tr "
t_nofault_msg:    .asciz "no fault"
t_entered_msg:    .asciz "the task was entered"
m_gate_np:        .asciz "int 0x40, task gate not present: "
m_short:          .asciz "int 0x41, TSS limit 0x66: "
m_np:             .asciz "int 0x42, TSS not present: "
m_busy:           .asciz "int 0x43, TSS busy (the main task): "
m_ldt:            .asciz "int 0x44, gate names LDT selector 0x3c: "
m_beyond:         .asciz "int 0x45, gate names 0x80, past the GDT limit: "
m_data:           .asciz "int 0x46, gate names a data segment: "
m_tss_page:       .asciz "int 0x49, TSS on a not-present page: "
m_bad_ds:         .asciz "int 0x47, new task's DS 0x1234: "
m_eip_limit:      .asciz "int 0x48, new task's EIP past CS's limit: "
m_df:             .asciz "#GP through a task gate to the short TSS: "
m_push_pf:        .asciz "#GP through a task gate, error code pushed on a not-present page: "
m_user_task_gate: .asciz "ring 3: int 0x4a through a DPL-0 task gate: "
m_user_int_np:    .asciz "ring 3: int 0x4b through a not-present DPL-0 interrupt gate: "
m_jmp_short:      .asciz "jmp 0x30 (TSS limit 0x66): "
m_jmp_np:         .asciz "jmp 0x38 (TSS not present): "
m_jmp_gate_np:    .asciz "jmp 0x68 (task gate not present): "
m_call_busy:      .asciz "call 0x28 (TSS busy): "
m_iret_link:      .asciz "iret with NT, back link to an available TSS: "
m_jmp_bad_ds:     .asciz "jmp 0x40 (new task's DS 0x1234): "

.include "runtime.S"
