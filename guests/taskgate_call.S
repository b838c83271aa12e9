# taskgate_call.S - far call and jmp to a TSS and through a GDT task gate, and iret back.
#
# Every switch here is made by an instruction, so by the CPU itself (Unicorn's switch under
# hvsim); what is checked is that it agrees with the state the machine gave the guest at boot
# and with hvsim's own delivery afterwards. Paging on (4 MiB pages, identity, PSE); task B has a
# page directory of its own in which linear 0x400000 is physical 0x800000, so the marker word
# there differs. The GDT adds TSS A (0x30), TSS B (0x38) and a DPL-0 task gate to B (0x40).
#   1. Before any ltr, TR is what the CPU had at reset: selector 0, base 0, a 32-bit TSS. `call
#      0x30` saves the boot state there (EIP at linear 0x20) and enters task A with back link 0.
#      Task A goes on as the kernel: it prints TR, its back link, EFLAGS (NT set), the saved EIP,
#      its access byte (busy) and GDT entry 0 (untouched), then clears NT.
#   2. `call 0x38` (TSS B): B prints TR, its back link (0x30), EFLAGS, CR3 and the marker through
#      its own page directory, both access bytes; its iretd (NT set) returns to A. A prints TR,
#      EFLAGS, CR3 and the marker (its own again), the access bytes (B free), B's saved EIP
#      (after its iretd) and EFLAGS (saved with NT clear).
#   3. `call 0x40` (the task gate): B resumes after its iretd and runs again (runs 2).
#   4. `jmp 0x38`: no nesting. B finds NT clear and its back link as it was, A free and B busy;
#      it jumps back with `jmp 0x30`, and A resumes after its jmp with A busy and B free (B's
#      saved EIP is now after that jmp, 0xc past the point after its iretd).
#   5. A sets NT and runs iretd: its back link is 0, the boot task, which has no TSS
#      descriptor: #TS(0), delivered through the IDT in task A (frame EIP on the iretd).
# hvsim: task-switch (hardware task switches, named with str: the conformance test compares this
# guest with QEMU under native and hvm; under trap str shows the monitor's TR)

PD_A = 0x200000
PD_B = 0x201000

main:
    mov esi, k_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 10
    mov ebx, k_ts
    mov cl, 0x8e
    call idt_set_gate
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors
    mov edi, k_gdt
    mov ecx, 0xc
k_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz k_copy
    mov edi, k_gdt + 0x30
    mov eax, k_tss_a
    call k_tss_descriptor
    mov edi, k_gdt + 0x38
    mov eax, k_tss_b
    call k_tss_descriptor
    mov eax, k_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]

    mov edi, PD_A
    mov ecx, 0x800
    xor eax, eax
k_clear:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz k_clear
    mov eax, 0x83                       # 4 MiB, read/write, present
    xor ebx, ebx
k_pde:
    mov dword ptr [PD_A + ebx * 4], eax
    mov dword ptr [PD_B + ebx * 4], eax
    add eax, 0x400000
    inc ebx
    cmp ebx, 4
    jne k_pde
    mov dword ptr [0x201004], 0x800083
    mov dword ptr [0x400000], 0x41414141
    mov dword ptr [0x800000], 0x42424242
    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, PD_A
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    mov edi, k_tss_a
    mov eax, k_task_a
    mov ebx, esp                        # task A goes on with the boot stack
    mov ecx, PD_A
    call k_init_tss
    mov edi, k_tss_b
    mov eax, k_task_b
    mov ebx, k_stack_b_top
    mov ecx, PD_B
    call k_init_tss

    mov esi, k_boot_msg
    call puts
    str eax
    mov esi, k_tr_msg
    call put_kv_hex
    .byte 0x9a; .long 0; .word 0x30     # call far to TSS A: never returns
k_boot_return:
    ud2

k_task_a:
    pushfd
    pop dword ptr [k_eflags]
    mov esi, k_a_msg
    call puts
    str eax
    mov esi, k_tr_msg
    call put_kv_hex
    movzx eax, word ptr [k_tss_a]
    mov esi, k_link_msg
    call put_kv_hex
    mov eax, dword ptr [k_eflags]
    mov esi, k_eflags_msg
    call put_kv_hex
    mov eax, dword ptr [0x20]
    sub eax, k_boot_return
    mov esi, k_boot_eip_msg
    call put_kv_hex
    movzx eax, byte ptr [k_gdt + 0x35]
    mov esi, k_access_a_msg
    call put_kv_hex
    mov eax, dword ptr [k_gdt + 4]
    mov esi, k_gdt0_msg
    call put_kv_hex
    pushfd
    and dword ptr [esp], 0xffffbfff     # NT off: task A's irets are plain ones from now on
    popfd

    mov esi, k_call_msg
    call puts
    .byte 0x9a; .long 0; .word 0x38     # call far to TSS B
    call k_back_in_a
    mov esi, k_gate_msg
    call puts
    .byte 0x9a; .long 0; .word 0x40     # call far through the task gate
    call k_back_in_a
    mov esi, k_jmp_msg
    call puts
    .byte 0xea; .long 0; .word 0x38     # jmp far to TSS B
k_a_after_jmp:
    call k_back_in_a
    mov esi, k_iret_msg
    call puts
    pushfd
    or dword ptr [esp], 0x4000          # NT: the next iretd is a task return
    popfd
k_a_iret:
    iretd
    ud2

# What task A finds when it runs again.
k_back_in_a:
    pushfd
    pop dword ptr [k_eflags]
    mov esi, k_back_msg
    call puts
    str eax
    mov esi, k_tr_msg
    call put_kv_hex
    mov eax, dword ptr [k_eflags]
    mov esi, k_eflags_msg
    call put_kv_hex
    mov eax, cr3
    mov esi, k_cr3_msg
    call put_kv_hex
    mov eax, dword ptr [0x400000]
    mov esi, k_marker_msg
    call put_kv_hex
    call k_access_bytes
    mov eax, dword ptr [k_tss_b + 0x20]
    sub eax, k_task_b_resume
    mov esi, k_b_eip_msg
    call put_kv_hex
    mov eax, dword ptr [k_tss_b + 0x24]
    mov esi, k_b_eflags_msg
    call put_kv_hex
    ret

k_access_bytes:
    movzx eax, byte ptr [k_gdt + 0x35]
    mov esi, k_access_a_msg
    call put_kv_hex
    movzx eax, byte ptr [k_gdt + 0x3d]
    mov esi, k_access_b_msg
    call put_kv_hex
    ret

k_task_b:
    pushfd
    pop dword ptr [k_eflags]
    inc dword ptr [k_runs_b]
    mov esi, k_b_msg
    call puts
    mov eax, dword ptr [k_runs_b]
    mov esi, k_runs_msg
    call put_kv_dec
    str eax
    mov esi, k_tr_msg
    call put_kv_hex
    movzx eax, word ptr [k_tss_b]
    mov esi, k_link_msg
    call put_kv_hex
    mov eax, dword ptr [k_eflags]
    mov esi, k_eflags_msg
    call put_kv_hex
    mov eax, cr3
    mov esi, k_cr3_msg
    call put_kv_hex
    mov eax, dword ptr [0x400000]
    mov esi, k_marker_msg
    call put_kv_hex
    call k_access_bytes
    test dword ptr [k_eflags], 0x4000
    jz k_b_jmp_back
    iretd                               # nested: back to the caller
k_task_b_resume:
    jmp k_task_b
k_b_jmp_back:
    .byte 0xea; .long 0; .word 0x30     # not nested: jmp far back to task A
    jmp k_task_b

k_ts:
    mov esi, k_ts_msg
    call puts
    mov eax, dword ptr [esp]
    mov esi, k_ts_error_msg
    call put_kv_hex
    mov eax, dword ptr [esp + 4]
    sub eax, k_a_iret
    mov esi, k_ts_eip_msg
    call put_kv_hex
    str eax
    mov esi, k_tr_msg
    call put_kv_hex
    clts
    mov al, 0
    jmp exit

# EDI = GDT slot, EAX = base: an available 32-bit TSS, DPL 0, limit 0x67.
k_tss_descriptor:
    mov word ptr [edi], 0x67
    mov word ptr [edi + 2], ax
    shr eax, 0x10
    mov byte ptr [edi + 4], al
    mov byte ptr [edi + 5], 0x89
    mov byte ptr [edi + 6], 0
    mov byte ptr [edi + 7], ah
    ret

# EDI = TSS, EAX = EIP, EBX = ESP, ECX = CR3: a ring-0 task with flat segments, IF=0.
k_init_tss:
    mov dword ptr [edi + 0x1c], ecx
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

k_eflags: .long 0
k_runs_b: .long 0

.balign 8, 0
k_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0, 0                          # 0x30 TSS A
    .long 0, 0                          # 0x38 TSS B
    .long 0x00380000, 0x00008500        # 0x40 task gate, DPL 0, to TSS B
k_gdt_end:
.balign 4, 0
    .word 0
k_gdt_ptr:
    .word k_gdt_end - k_gdt - 1
    .long k_gdt
.balign 16, 0
k_tss_a:
    .fill 0x68, 1, 0
.balign 16, 0
k_tss_b:
    .fill 0x68, 1, 0
.balign 16, 0
k_stack_b:
    .fill 0x400, 1, 0
k_stack_b_top:

k_name:          .asciz "taskgate_call\n"
k_boot_msg:      .asciz "boot, before any ltr:\n"
k_a_msg:         .asciz "task A, entered by call 0x30 from the boot task:\n"
k_call_msg:      .asciz "call 0x38 (TSS B):\n"
k_gate_msg:      .asciz "call 0x40 (task gate to B):\n"
k_jmp_msg:       .asciz "jmp 0x38 (TSS B):\n"
k_iret_msg:      .asciz "task A: iretd with NT set, back link 0:\n"
k_b_msg:         .asciz "  task B:\n"
k_back_msg:      .asciz "  task A again:\n"
k_ts_msg:        .asciz "  #TS in task A\n"
k_tr_msg:        .asciz "    tr: "
k_link_msg:      .asciz "    back link: "
k_eflags_msg:    .asciz "    eflags: "
k_runs_msg:      .asciz "    runs: "
k_cr3_msg:       .asciz "    cr3: "
k_marker_msg:    .asciz "    marker at 0x400000: "
k_boot_eip_msg:  .asciz "    boot task's eip at 0x20 - after its call: "
k_access_a_msg:  .asciz "    tss A access byte: "
k_access_b_msg:  .asciz "    tss B access byte: "
k_gdt0_msg:      .asciz "    gdt entry 0, high dword: "
k_b_eip_msg:     .asciz "    tss B eip - after its iretd: "
k_b_eflags_msg:  .asciz "    tss B eflags: "
k_ts_error_msg:  .asciz "    error code: "
k_ts_eip_msg:    .asciz "    frame eip - the iretd: "

.include "runtime.S"
