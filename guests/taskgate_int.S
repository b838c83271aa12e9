# taskgate_int.S - int n and a device interrupt through IDT task gates, and iret (NT set) back.
#
# Paging on (4 MiB pages, identity, user read/write, PSE). The GDT adds three TSSs: 0x30 for the
# task behind `int 0x40` (a DPL-0 task gate), 0x38 for the task behind `int 0x41` (a DPL-3 task
# gate, used from ring 3), 0x40 for the task behind vector 0x24 (COM1's IRQ4 with the PICs at
# 0x20). Each of those tasks loops: it records what it sees, runs iretd, and jumps back to its
# start when it is entered again (it resumes after its iretd). Its iretd finds NT set (the switch
# nested it in the interrupted task): a task return, through its back link, that frees its TSS.
#   1. `int 0x40` twice: the task's EFLAGS on entry (NT set; the rest from its TSS), TR, EAX
#      (from its TSS, then what it held at its iretd), ESP (no error code was pushed), its back
#      link and the two TSSs' access bytes (both busy); the
#      main task's saved EIP (after the int); then back in the main task: TR, EFLAGS (NT clear),
#      the access bytes (the task's TSS is free again), the task's saved EIP (after its iretd)
#      and EFLAGS (saved with NT clear), and its back link (still the main task's).
#   2. IRQ4 raised with IF=0 (IER.THRI with the transmitter empty, as stishadow.S does), then
#      `sti; mov [marker], 1; nop`: the task runs after the mov (sti's shadow), with its own
#      EFLAGS (IF=0 from its TSS, NT set); the main task's saved EIP and EFLAGS (IF=1). The task
#      quiets the UART and sends the EOI before its iretd.
#   3. From ring 3 (iretd to CS 0x1b): `int 0x41` through the DPL-3 task gate. The ring-0 task
#      reads the ring-3 state saved in the main TSS (CS, SS, EIP, DS); its iretd returns to ring
#      3 through the main TSS, where the user program stores its CS and a marker and goes back
#      to the kernel with `int 0x80` (a DPL-3 interrupt gate).
# hvsim: task-switch (hardware task switches, named with str: the conformance test compares this
# guest with QEMU under native and hvm; under trap str shows the monitor's TR)

COM1_IER = 0x3f9
COM1_IIR = 0x3fa
COM1_LSR = 0x3fd
PD = 0x200000
USER_STACK_TOP = 0x3ff000

main:
    mov esi, i_name
    call puts
    mov al, 0xef                        # master mask: only IRQ4 (COM1)
    call pic_remap
    mov eax, 0x80                       # the user program's way back
    mov ebx, i_syscall
    mov cl, 0xee
    call idt_set_gate
    mov eax, 0x27
    mov ebx, i_spurious
    mov cl, 0x8e
    call idt_set_gate
    mov edi, idt + 0x200                # vector 0x40: task gate, DPL 0, to 0x30
    mov dword ptr [edi], 0x00300000
    mov dword ptr [edi + 4], 0x00008500
    mov edi, idt + 0x208                # vector 0x41: task gate, DPL 3, to 0x38
    mov dword ptr [edi], 0x00380000
    mov dword ptr [edi + 4], 0x0000e500
    mov edi, idt + 0x120                # vector 0x24: task gate, DPL 0, to 0x40
    mov dword ptr [edi], 0x00400000
    mov dword ptr [edi + 4], 0x00008500
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors, TSS included
    mov edi, i_gdt
    mov ecx, 0xc
i_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz i_copy
    mov edi, i_gdt + 0x30
    mov eax, i_tss40
    call i_tss_descriptor
    mov edi, i_gdt + 0x38
    mov eax, i_tss41
    call i_tss_descriptor
    mov edi, i_gdt + 0x40
    mov eax, i_tss24
    call i_tss_descriptor
    mov eax, i_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    mov eax, 0x28
    ltr ax

    mov edi, PD
    mov ecx, 0x400
    xor eax, eax
i_clear_pd:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz i_clear_pd
    mov dword ptr [0x200000], 0x000087  # 4 MiB pages, user, write, present
    mov dword ptr [0x200004], 0x400087
    mov dword ptr [0x200008], 0x800087
    mov dword ptr [0x20000c], 0xc00087
    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov dword ptr [tss + 0x1c], eax     # the main task's CR3, for the way back
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov edi, i_tss40
    mov eax, i_task40
    mov ebx, i_stack40_top
    call i_init_tss
    mov dword ptr [i_tss40 + 0x24], 0x00000286  # EFLAGS: IF, SF, PF
    mov edi, i_tss41
    mov eax, i_task41
    mov ebx, i_stack41_top
    call i_init_tss
    mov edi, i_tss24
    mov eax, i_task24
    mov ebx, i_stack24_top
    call i_init_tss

# ---- 1. int 0x40, twice --------------------------------------------------------------------------
    mov esi, i_int40_msg
    call puts
    int 0x40
i_after_int40:
    mov ebx, i_after_int40
    call i_report40
    call i_back_in_main
    mov esi, i_int40_again_msg
    call puts
    int 0x40
i_after_int40_again:
    mov ebx, i_after_int40_again
    call i_report40
    call i_back_in_main

# ---- 2. IRQ4 through a task gate ---------------------------------------------------------------
    mov esi, i_irq_msg
    call puts
    call i_raise_irq4
    mov dword ptr [i_marker], 0
    sti
    mov dword ptr [i_marker], 1         # the shadow: runs before the interrupt task
i_irq_after:
    nop
    cli
    mov esi, i_count_msg
    mov eax, dword ptr [i_count24]
    call put_kv_dec
    mov esi, i_marker_msg
    mov eax, dword ptr [i_seen]
    call put_kv_hex
    mov esi, i_eflags_msg
    mov eax, dword ptr [i_eflags24]
    call put_kv_hex
    mov esi, i_saved_eip_msg
    mov eax, dword ptr [i_saved_eip24]
    sub eax, i_irq_after
    call put_kv_hex
    mov esi, i_saved_eflags_msg
    mov eax, dword ptr [i_saved_eflags24]
    call put_kv_hex
    mov esi, i_isr_msg
    mov eax, dword ptr [i_isr24]
    call put_kv_hex
    call i_back_in_main

# ---- 3. from ring 3, int 0x41 through a DPL-3 task gate ---------------------------------------------
    mov esi, i_user_msg
    call puts
    mov dword ptr [i_saved_esp], esp
    mov eax, 0x23
    mov ds, eax
    mov es, eax
    push eax                            # SS
    mov eax, USER_STACK_TOP
    push eax                            # ESP
    push 0x2                            # EFLAGS: IF=0
    mov eax, 0x1b
    push eax                            # CS
    mov eax, i_user
    push eax                            # EIP
    iretd
i_kernel_again:
    mov esi, i_task41_msg
    call puts
    mov esi, i_tr_msg
    mov eax, dword ptr [i_tr41]
    call put_kv_hex
    mov esi, i_saved_cs_msg
    mov eax, dword ptr [i_saved_cs41]
    call put_kv_hex
    mov esi, i_saved_ss_msg
    mov eax, dword ptr [i_saved_ss41]
    call put_kv_hex
    mov esi, i_saved_ds_msg
    mov eax, dword ptr [i_saved_ds41]
    call put_kv_hex
    mov esi, i_saved_eip_msg
    mov eax, dword ptr [i_saved_eip41]
    sub eax, i_user_after
    call put_kv_hex
    mov esi, i_saved_esp_msg
    mov eax, dword ptr [i_saved_esp41]
    call put_kv_hex
    mov esi, i_user_back_msg
    call puts
    mov esi, i_user_cs_msg
    mov eax, dword ptr [i_user_cs]
    call put_kv_hex
    mov esi, i_user_marker_msg
    mov eax, dword ptr [i_user_marker]
    call put_kv_hex
    call i_back_in_main
    clts
    mov al, 0
    ret

i_user:
    int 0x41
i_user_after:
    mov eax, cs
    mov dword ptr [i_user_cs], eax
    mov dword ptr [i_user_marker], 0x55534552
    int 0x80

i_syscall:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov esp, dword ptr [i_saved_esp]
    jmp i_kernel_again

# EDI = GDT slot, EAX = base: an available 32-bit TSS, DPL 0, limit 0x67.
i_tss_descriptor:
    mov word ptr [edi], 0x67
    mov word ptr [edi + 2], ax
    shr eax, 0x10
    mov byte ptr [edi + 4], al
    mov byte ptr [edi + 5], 0x89
    mov byte ptr [edi + 6], 0
    mov byte ptr [edi + 7], ah
    ret

# EDI = TSS, EAX = EIP, EBX = ESP: a ring-0 task with flat segments, the main task's CR3, IF=0.
i_init_tss:
    mov dword ptr [edi + 0x1c], PD
    mov dword ptr [edi + 0x20], eax
    mov dword ptr [edi + 0x24], 0x2
    mov dword ptr [edi + 0x28], 0xa0a0a0a0
    mov dword ptr [edi + 0x38], ebx
    mov dword ptr [edi + 0x48], 0x10
    mov dword ptr [edi + 0x4c], 0x08
    mov dword ptr [edi + 0x50], 0x10
    mov dword ptr [edi + 0x54], 0x10
    mov dword ptr [edi + 0x58], 0x10
    mov dword ptr [edi + 0x5c], 0x10
    mov word ptr [edi + 0x66], 0x68
    ret

i_report40:
    mov esi, i_task40_msg
    call puts
    mov esi, i_count_msg
    mov eax, dword ptr [i_count40]
    call put_kv_dec
    mov esi, i_eflags_msg
    mov eax, dword ptr [i_eflags40]
    call put_kv_hex
    mov esi, i_tr_msg
    mov eax, dword ptr [i_tr40]
    call put_kv_hex
    mov esi, i_eax_msg
    mov eax, dword ptr [i_eax40]
    call put_kv_hex
    mov esi, i_esp_msg
    mov eax, dword ptr [i_esp40]
    sub eax, i_stack40_top
    call put_kv_hex
    mov esi, i_link_msg
    mov eax, dword ptr [i_link40]
    call put_kv_hex
    mov esi, i_main_access_msg
    mov eax, dword ptr [i_main_access40]
    call put_kv_hex
    mov esi, i_task_access_msg
    mov eax, dword ptr [i_task_access40]
    call put_kv_hex
    mov esi, i_saved_eip_msg
    mov eax, dword ptr [i_saved_eip40]
    sub eax, ebx                        # EBX: the label just after the int
    call put_kv_hex
    ret

# What the main task finds after a task returned to it.
i_back_in_main:
    pushfd
    pop dword ptr [i_main_eflags]
    mov esi, i_main_msg
    call puts
    str eax
    mov esi, i_tr_msg
    call put_kv_hex
    mov esi, i_eflags_msg
    mov eax, dword ptr [i_main_eflags]
    call put_kv_hex
    movzx eax, byte ptr [i_gdt + 0x2d]
    mov esi, i_main_access_msg
    call put_kv_hex
    movzx eax, byte ptr [i_gdt + 0x35]
    mov esi, i_access40_msg
    call put_kv_hex
    movzx eax, byte ptr [i_gdt + 0x3d]
    mov esi, i_access41_msg
    call put_kv_hex
    movzx eax, byte ptr [i_gdt + 0x45]
    mov esi, i_access24_msg
    call put_kv_hex
    mov eax, dword ptr [i_tss40 + 0x20]
    sub eax, i_task40_resume
    mov esi, i_tss40_eip_msg
    call put_kv_hex
    mov eax, dword ptr [i_tss40 + 0x24]
    mov esi, i_tss40_eflags_msg
    call put_kv_hex
    movzx eax, word ptr [i_tss40]
    mov esi, i_tss40_link_msg
    call put_kv_hex
    ret

# ---- the tasks -----------------------------------------------------------------------------------
i_task40:
    pushfd
    pop dword ptr [i_eflags40]
    mov dword ptr [i_eax40], eax
    mov dword ptr [i_esp40], esp
    inc dword ptr [i_count40]
    str eax
    mov dword ptr [i_tr40], eax
    movzx eax, word ptr [i_tss40]
    mov dword ptr [i_link40], eax
    movzx eax, byte ptr [i_gdt + 0x2d]
    mov dword ptr [i_main_access40], eax
    movzx eax, byte ptr [i_gdt + 0x35]
    mov dword ptr [i_task_access40], eax
    mov eax, dword ptr [tss + 0x20]
    mov dword ptr [i_saved_eip40], eax
    mov eax, dword ptr [i_count40]      # kept in the task's TSS until it runs again
    or eax, 0x5a5a0000
    iretd
i_task40_resume:
    jmp i_task40

i_task24:
    pushfd
    pop dword ptr [i_eflags24]
    inc dword ptr [i_count24]
    mov eax, dword ptr [i_marker]
    mov dword ptr [i_seen], eax
    mov eax, dword ptr [tss + 0x20]
    mov dword ptr [i_saved_eip24], eax
    mov eax, dword ptr [tss + 0x24]
    mov dword ptr [i_saved_eflags24], eax
    mov al, 0x0b                        # OCW3: read the ISR
    out 0x20, al
    in al, 0x20
    movzx eax, al
    mov dword ptr [i_isr24], eax
    mov dx, COM1_IER                    # IER = 0: the line goes low
    mov al, 0
    out dx, al
    mov dx, COM1_IIR
    in al, dx
    mov al, 0x20                        # non-specific EOI
    out 0x20, al
    iretd
    jmp i_task24

i_task41:
    str eax
    mov dword ptr [i_tr41], eax
    mov eax, dword ptr [tss + 0x4c]
    mov dword ptr [i_saved_cs41], eax
    mov eax, dword ptr [tss + 0x50]
    mov dword ptr [i_saved_ss41], eax
    mov eax, dword ptr [tss + 0x54]
    mov dword ptr [i_saved_ds41], eax
    mov eax, dword ptr [tss + 0x20]
    mov dword ptr [i_saved_eip41], eax
    mov eax, dword ptr [tss + 0x38]
    mov dword ptr [i_saved_esp41], eax
    iretd
    jmp i_task41

# Wait until the transmitter is empty, then enable its interrupt: IRQ4 rises at once and, with
# IF=0, stays pending in the PIC.
i_raise_irq4:
    push eax
    push edx
i_raise_wait:
    mov dx, COM1_LSR
    in al, dx
    test al, 0x20
    jz i_raise_wait
    mov dx, COM1_IER
    mov al, 0x02                        # IER.THRI
    out dx, al
    pop edx
    pop eax
    ret

i_spurious:
    iretd

i_saved_esp:       .long 0
i_main_eflags:     .long 0
i_count40:         .long 0
i_eflags40:        .long 0
i_eax40:           .long 0
i_esp40:           .long 0
i_tr40:            .long 0
i_link40:          .long 0
i_main_access40:   .long 0
i_task_access40:   .long 0
i_saved_eip40:     .long 0
i_marker:          .long 0
i_seen:            .long 0xffffffff
i_count24:         .long 0
i_eflags24:        .long 0
i_saved_eip24:     .long 0
i_saved_eflags24:  .long 0
i_isr24:           .long 0
i_tr41:            .long 0
i_saved_cs41:      .long 0
i_saved_ss41:      .long 0
i_saved_ds41:      .long 0
i_saved_eip41:     .long 0
i_saved_esp41:     .long 0
i_user_cs:         .long 0
i_user_marker:     .long 0

.balign 8, 0
i_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0, 0                          # 0x30 TSS of the int 0x40 task
    .long 0, 0                          # 0x38 TSS of the int 0x41 task
    .long 0, 0                          # 0x40 TSS of the IRQ4 task
i_gdt_end:
.balign 4, 0
    .word 0
i_gdt_ptr:
    .word i_gdt_end - i_gdt - 1
    .long i_gdt
.balign 16, 0
i_tss40:
    .fill 0x68, 1, 0
.balign 16, 0
i_tss41:
    .fill 0x68, 1, 0
.balign 16, 0
i_tss24:
    .fill 0x68, 1, 0
.balign 16, 0
i_stack40:
    .fill 0x400, 1, 0
i_stack40_top:
i_stack41:
    .fill 0x400, 1, 0
i_stack41_top:
i_stack24:
    .fill 0x400, 1, 0
i_stack24_top:

i_name:             .asciz "taskgate_int\n"
i_int40_msg:        .asciz "int 0x40 through a task gate:\n"
i_int40_again_msg:  .asciz "int 0x40 again (the task resumes after its iretd):\n"
i_irq_msg:          .asciz "IRQ4 through a task gate, taken after sti; mov [marker], 1:\n"
i_user_msg:         .asciz "ring 3: int 0x41 through a DPL-3 task gate:\n"
i_task40_msg:       .asciz "  the int 0x40 task saw:\n"
i_task41_msg:       .asciz "  the int 0x41 task saw:\n"
i_main_msg:         .asciz "  the main task, back:\n"
i_user_back_msg:    .asciz "  the user program, back in ring 3:\n"
i_count_msg:        .asciz "    runs: "
i_eflags_msg:       .asciz "    eflags: "
i_tr_msg:           .asciz "    tr: "
i_eax_msg:          .asciz "    eax: "
i_esp_msg:          .asciz "    esp - its stack top: "
i_link_msg:         .asciz "    its back link: "
i_main_access_msg:  .asciz "    main tss access byte: "
i_task_access_msg:  .asciz "    its tss access byte: "
i_access40_msg:     .asciz "    int 0x40 tss access byte: "
i_access41_msg:     .asciz "    int 0x41 tss access byte: "
i_access24_msg:     .asciz "    irq tss access byte: "
i_saved_eip_msg:    .asciz "    main tss eip - where it returns: "
i_saved_eflags_msg: .asciz "    main tss eflags: "
i_saved_cs_msg:     .asciz "    main tss cs: "
i_saved_ss_msg:     .asciz "    main tss ss: "
i_saved_ds_msg:     .asciz "    main tss ds: "
i_saved_esp_msg:    .asciz "    main tss esp: "
i_tss40_eip_msg:    .asciz "    int 0x40 tss eip - after its iretd: "
i_tss40_eflags_msg: .asciz "    int 0x40 tss eflags: "
i_tss40_link_msg:   .asciz "    int 0x40 tss back link: "
i_marker_msg:       .asciz "    marker seen by the task: "
i_isr_msg:          .asciz "    PIC ISR in the task: "
i_user_cs_msg:      .asciz "    cs: "
i_user_marker_msg:  .asciz "    marker: "

.include "runtime.S"
