# taskgate_gp.S - a #GP delivered through an IDT task gate, and a far jmp through a GDT task gate back.
#
# The shape of kvm-unit-tests' x86/taskswitch.c, with a second address space so that the CR3
# switch shows. The kernel turns paging on (4 MiB pages, identity, PSE) with two page directories:
# the main task's maps linear 0x400000 to physical 0x400000, the fault task's to 0x800000, and a
# marker word differs between the two. Its GDT is the runtime's six descriptors, the fault task's
# TSS at 0x30 and a task gate at 0x38 naming the main task's TSS (0x28, loaded with ltr). IDT
# vector 13 is a task gate to 0x30. `mov es, eax` with EAX = 0x1234 (an LDT selector, no LDT) is
# #GP(0x1234): the CPU saves the main task into its TSS, marks 0x30 busy, links it back to 0x28,
# loads CR3, EFLAGS (NT set), the eight registers and the segments from the fault task's TSS,
# sets CR0.TS and pushes the error code on the new task's stack.
# The fault task prints what it finds: EFLAGS at entry, TR, its registers, the error code and
# ESP after popping it, CR0 and CR3, the marker (through its own CR3), both back links, both TSS
# access bytes (0x8b: busy), and what was saved in the main task's TSS (EIP on the faulting
# instruction, EFLAGS, the registers, the selectors). It then moves the saved EIP past the
# `mov es, eax`, clears the main TSS's busy bit (a jmp cannot enter a busy task) and jumps
# through the GDT task gate. The main task resumes after the faulting instruction with its
# registers and CR3 back, and prints TR, EFLAGS (NT clear: the system flags only, since after a
# task switch made by a jmp QEMU's TCG keeps the arithmetic flags of the task it left, its lazy
# flags, where the architecture loads them from the TSS; so does Unicorn, except where it
# translates one instruction at a time), CR3, the marker, CR0, the two access bytes
# (a jmp frees the task it leaves), and what the fault task's TSS kept: EIP after its ljmp,
# its back link (untouched by a jmp). Then a second #GP: the fault task resumes after its ljmp
# (with the registers it had there), goes round to its start and does it all again.
# hvsim: task-switch (hardware task switches, named with str: the conformance test compares this
# guest with QEMU under native and hvm; under trap str shows the monitor's TR)

PD_MAIN = 0x200000
PD_FAULT = 0x201000
SEL_FAULT_TSS = 0x30
SEL_MAIN_GATE = 0x38

main:
    mov esi, g_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al

    mov esi, gdt                        # the runtime's six descriptors, TSS included
    mov edi, g_gdt
    mov ecx, 0xc
g_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz g_copy
    mov eax, g_fault_tss                # 0x30: the fault task's TSS, available, limit 0x67
    mov word ptr [g_gdt + 0x30], 0x67
    mov word ptr [g_gdt + 0x32], ax
    shr eax, 0x10
    mov byte ptr [g_gdt + 0x34], al
    mov byte ptr [g_gdt + 0x35], 0x89
    mov byte ptr [g_gdt + 0x36], 0
    mov byte ptr [g_gdt + 0x37], ah
    mov eax, g_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    mov eax, 0x28
    ltr ax

    # Two page directories of 4 MiB identity pages for the first 16 MiB; the fault task's maps
    # linear 0x400000 to physical 0x800000.
    mov edi, PD_MAIN
    mov ecx, 0x800
    xor eax, eax
g_clear:
    mov dword ptr [edi], eax
    add edi, 4
    dec ecx
    jnz g_clear
    mov eax, 0x83                       # 4 MiB, read/write, present
    xor ebx, ebx
g_pde:
    mov dword ptr [PD_MAIN + ebx * 4], eax
    mov dword ptr [PD_FAULT + ebx * 4], eax
    add eax, 0x400000
    inc ebx
    cmp ebx, 4
    jne g_pde
    mov dword ptr [0x201004], 0x800083
    mov dword ptr [0x400000], 0x4d41494e    # "MAIN" as a dword
    mov dword ptr [0x800000], 0x464c5400    # the fault task's marker
    mov eax, cr4
    or eax, 0x10                        # PSE
    mov cr4, eax
    mov eax, PD_MAIN
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    # The fault task: its own stack, registers and address space.
    mov dword ptr [g_fault_tss + 0x1c], 0x201000        # CR3
    mov dword ptr [g_fault_tss + 0x20], g_fault_task    # EIP
    mov dword ptr [g_fault_tss + 0x24], 0x2             # EFLAGS
    mov dword ptr [g_fault_tss + 0x28], 0xa0a0a0a0      # EAX
    mov dword ptr [g_fault_tss + 0x2c], 0xc1c1c1c1      # ECX
    mov dword ptr [g_fault_tss + 0x30], 0xd2d2d2d2      # EDX
    mov dword ptr [g_fault_tss + 0x34], 0xb3b3b3b3      # EBX
    mov dword ptr [g_fault_tss + 0x38], g_fault_stack_top   # ESP
    mov dword ptr [g_fault_tss + 0x3c], 0xe5e5e5e5      # EBP
    mov dword ptr [g_fault_tss + 0x40], 0x56565656      # ESI
    mov dword ptr [g_fault_tss + 0x44], 0xd7d7d7d7      # EDI
    mov dword ptr [g_fault_tss + 0x48], 0x10            # ES
    mov dword ptr [g_fault_tss + 0x4c], 0x08            # CS
    mov dword ptr [g_fault_tss + 0x50], 0x10            # SS
    mov dword ptr [g_fault_tss + 0x54], 0x10            # DS
    mov dword ptr [g_fault_tss + 0x58], 0x10            # FS
    mov dword ptr [g_fault_tss + 0x5c], 0x10            # GS
    mov word ptr [g_fault_tss + 0x66], 0x68             # no I/O bitmap
    mov dword ptr [tss + 0x1c], 0x200000                # the main task's CR3, for the way back

    mov edi, idt + 0x68                 # vector 13: a task gate to 0x30
    mov dword ptr [edi], 0x00300000
    mov dword ptr [edi + 4], 0x00008500
    call idt_load

    mov esi, g_first_msg
    call puts
    call g_fault_and_back
    mov esi, g_second_msg
    call puts
    call g_fault_and_back
    clts
    mov al, 0
    ret

# Raise #GP(0x1234) with known registers; print what the main task finds when it comes back.
g_fault_and_back:
    pushad
    mov ebx, 0x11111111
    mov ecx, 0x22222222
    mov edx, 0x33333333
    mov esi, 0x44444444
    mov edi, 0x55555555
    mov ebp, 0x66666666
    mov eax, 0x1234
g_fault_insn:
    mov es, eax
    pushfd
    pop dword ptr [g_m_eflags]
    mov dword ptr [g_m_ebx], ebx
    mov dword ptr [g_m_ecx], ecx
    mov dword ptr [g_m_edx], edx
    mov dword ptr [g_m_esi], esi
    mov dword ptr [g_m_edi], edi
    mov dword ptr [g_m_ebp], ebp
    mov dword ptr [g_m_eax], eax
    mov esi, g_back_msg
    call puts
    str eax
    mov esi, g_tr_msg
    call put_kv_hex
    mov eax, dword ptr [g_m_eflags]
    and eax, 0xfffff72a                 # without CF, PF, AF, ZF, SF, OF: see the header
    mov esi, g_system_flags_msg
    call put_kv_hex
    mov eax, dword ptr [g_m_eax]
    mov esi, g_eax_msg
    call put_kv_hex
    mov eax, dword ptr [g_m_ebx]
    xor eax, dword ptr [g_m_ecx]
    xor eax, dword ptr [g_m_edx]
    xor eax, dword ptr [g_m_esi]
    xor eax, dword ptr [g_m_edi]
    xor eax, dword ptr [g_m_ebp]
    mov esi, g_xor_msg
    call put_kv_hex
    mov eax, es
    mov esi, g_es_msg
    call put_kv_hex
    mov eax, cr0
    mov esi, g_cr0_msg
    call put_kv_hex
    mov eax, cr3
    mov esi, g_cr3_msg
    call put_kv_hex
    mov eax, dword ptr [0x400000]
    mov esi, g_marker_msg
    call put_kv_hex
    movzx eax, byte ptr [g_gdt + 0x2d]
    mov esi, g_main_access_msg
    call put_kv_hex
    movzx eax, byte ptr [g_gdt + 0x35]
    mov esi, g_fault_access_msg
    call put_kv_hex
    mov eax, dword ptr [g_fault_tss + 0x20]
    sub eax, g_fault_resume
    mov esi, g_fault_eip_msg
    call put_kv_hex
    movzx eax, word ptr [g_fault_tss]
    mov esi, g_fault_link_msg
    call put_kv_hex
    popad
    ret

# The fault task. Entered with the error code on its stack; leaves through the GDT task gate
# and, entered again, resumes after that jump.
g_fault_task:
    pushfd
    pop dword ptr [g_h_eflags]
    mov dword ptr [g_h_eax], eax
    mov dword ptr [g_h_ebx], ebx
    mov dword ptr [g_h_ecx], ecx
    mov dword ptr [g_h_edx], edx
    mov dword ptr [g_h_esi], esi
    mov dword ptr [g_h_edi], edi
    mov dword ptr [g_h_ebp], ebp
    pop dword ptr [g_h_error]
    mov dword ptr [g_h_esp], esp
    mov esi, g_task_msg
    call puts
    mov eax, dword ptr [g_h_eflags]
    mov esi, g_eflags_msg
    call put_kv_hex
    str eax
    mov esi, g_tr_msg
    call put_kv_hex
    mov eax, dword ptr [g_h_eax]
    mov esi, g_eax_msg
    call put_kv_hex
    mov eax, dword ptr [g_h_ebx]
    mov esi, g_ebx_msg
    call put_kv_hex
    mov eax, dword ptr [g_h_ecx]
    xor eax, dword ptr [g_h_edx]
    xor eax, dword ptr [g_h_esi]
    xor eax, dword ptr [g_h_edi]
    xor eax, dword ptr [g_h_ebp]
    mov esi, g_xor_msg
    call put_kv_hex
    mov eax, dword ptr [g_h_error]
    mov esi, g_error_msg
    call put_kv_hex
    mov eax, dword ptr [g_h_esp]
    sub eax, g_fault_stack_top
    mov esi, g_esp_msg
    call put_kv_hex
    mov eax, cr0
    mov esi, g_cr0_msg
    call put_kv_hex
    mov eax, cr3
    mov esi, g_cr3_msg
    call put_kv_hex
    mov eax, dword ptr [0x400000]
    mov esi, g_marker_msg
    call put_kv_hex
    movzx eax, word ptr [tss]
    mov esi, g_main_link_msg
    call put_kv_hex
    movzx eax, word ptr [g_fault_tss]
    mov esi, g_fault_link_msg
    call put_kv_hex
    movzx eax, byte ptr [g_gdt + 0x2d]
    mov esi, g_main_access_msg
    call put_kv_hex
    movzx eax, byte ptr [g_gdt + 0x35]
    mov esi, g_fault_access_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x20]
    sub eax, g_fault_insn
    mov esi, g_saved_eip_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x24]
    mov esi, g_saved_eflags_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x28]
    mov esi, g_saved_eax_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x34]
    mov esi, g_saved_ebx_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x48]
    mov esi, g_saved_es_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x4c]
    mov esi, g_saved_cs_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x50]
    mov esi, g_saved_ss_msg
    call put_kv_hex
    mov eax, dword ptr [tss + 0x60]
    mov esi, g_saved_ldt_msg
    call put_kv_hex
    add dword ptr [tss + 0x20], 2       # past the two-byte `mov es, eax`
    and byte ptr [g_gdt + 0x2d], 0xfd   # the main task is no longer busy: a jmp may enter it
    .byte 0xea; .long 0; .word SEL_MAIN_GATE   # jmp far through the GDT task gate
g_fault_resume:
    jmp g_fault_task

g_m_eflags: .long 0
g_m_eax:    .long 0
g_m_ebx:    .long 0
g_m_ecx:    .long 0
g_m_edx:    .long 0
g_m_esi:    .long 0
g_m_edi:    .long 0
g_m_ebp:    .long 0
g_h_eflags: .long 0
g_h_eax:    .long 0
g_h_ebx:    .long 0
g_h_ecx:    .long 0
g_h_edx:    .long 0
g_h_esi:    .long 0
g_h_edi:    .long 0
g_h_ebp:    .long 0
g_h_esp:    .long 0
g_h_error:  .long 0

.balign 8, 0
g_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0x00000000, 0x00000000        # 0x30 the fault task's TSS (filled in by main)
    .long 0x00280000, 0x00008500        # 0x38 task gate, DPL 0, to the main TSS 0x28
g_gdt_end:
.balign 4, 0
    .word 0
g_gdt_ptr:
    .word g_gdt_end - g_gdt - 1
    .long g_gdt
.balign 16, 0
g_fault_tss:
    .fill 0x68, 1, 0
.balign 16, 0
g_fault_stack:
    .fill 0x400, 1, 0
g_fault_stack_top:

g_name:             .asciz "taskgate_gp\n"
g_first_msg:        .asciz "main: mov es, 0x1234 -> #GP through the task gate\n"
g_second_msg:       .asciz "main: again: the fault task resumes after its ljmp\n"
g_task_msg:         .asciz "fault task:\n"
g_back_msg:         .asciz "main task, back:\n"
g_eflags_msg:       .asciz "  eflags: "
g_system_flags_msg: .asciz "  eflags (system flags): "
g_tr_msg:           .asciz "  tr: "
g_eax_msg:          .asciz "  eax: "
g_ebx_msg:          .asciz "  ebx: "
g_xor_msg:          .asciz "  ecx^edx^esi^edi^ebp (^ebx): "
g_error_msg:        .asciz "  error code: "
g_esp_msg:          .asciz "  esp - stack top after the pop: "
g_es_msg:           .asciz "  es: "
g_cr0_msg:          .asciz "  cr0: "
g_cr3_msg:          .asciz "  cr3: "
g_marker_msg:       .asciz "  marker at 0x400000: "
g_main_link_msg:    .asciz "  main tss back link: "
g_fault_link_msg:   .asciz "  fault tss back link: "
g_main_access_msg:  .asciz "  main tss access byte: "
g_fault_access_msg: .asciz "  fault tss access byte: "
g_saved_eip_msg:    .asciz "  main tss eip - faulting insn: "
g_saved_eflags_msg: .asciz "  main tss eflags: "
g_saved_eax_msg:    .asciz "  main tss eax: "
g_saved_ebx_msg:    .asciz "  main tss ebx: "
g_saved_es_msg:     .asciz "  main tss es: "
g_saved_cs_msg:     .asciz "  main tss cs: "
g_saved_ss_msg:     .asciz "  main tss ss: "
g_saved_ldt_msg:    .asciz "  main tss ldt: "
g_fault_eip_msg:    .asciz "  fault tss eip - after its ljmp: "

.include "runtime.S"
