# errcode.S - the error code the CPU pushes when a selector is refused, instruction by instruction.
#
# A monitor that emulates iret, ltr, far transfers or segment loads must raise the same fault
# with the same error code as the CPU: the selector (RPL bits cleared, the TI bit kept), or 0 for
# a null selector. The kernel loads its own GDT: the runtime's six descriptors (0x00-0x28) plus a
# not-present ring-0 code segment at 0x30, a not-present TSS at 0x38 and a not-present ring-0
# data segment at 0x40, a DPL-0 call gate at 0x48 whose target selector 0x60 lies beyond the
# limit, and a ring-0 code segment at 0x50 whose limit is only 0xfff (so the guest's addresses,
# at 1 MiB, lie outside it); the GDT limit is 0x57, so 0x58 and 0x60 lie beyond it, and 0x0c is
# in the (null) LDT. Some faults name a selector other than the one in the instruction (the gate's
# target) or none at all (an offset beyond the CS limit: error code 0). Each case runs one instruction at CPL 0 with IF=0; the handler for every vector it
# can raise records vector, error code and frame EIP, then resumes the kernel on its saved stack.
# One line per case: the vector, the error code, and the frame EIP relative to the instruction
# (0: a fault, reported on the instruction). "no fault" means the instruction completed (the
# case then runs ud2 to come back). No paging, no rings but 0: the guest also runs under trap.

E_NP_CODE = 0x30
E_NP_TSS = 0x38
E_NP_DATA = 0x40

main:
    mov esi, e_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 0
    mov ebx, e_h0
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 6
    mov ebx, e_h6
    call idt_set_gate
    mov eax, 8
    mov ebx, e_h8
    call idt_set_gate
    mov eax, 10
    mov ebx, e_h10
    call idt_set_gate
    mov eax, 11
    mov ebx, e_h11
    call idt_set_gate
    mov eax, 12
    mov ebx, e_h12
    call idt_set_gate
    mov eax, 13
    mov ebx, e_h13
    call idt_set_gate
    mov eax, 14
    mov ebx, e_h14
    call idt_set_gate
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors, TSS included
    mov edi, e_gdt
    mov ecx, 0xc
e_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz e_copy
    mov eax, dword ptr [e_gdt + 0x28]   # a copy of the TSS descriptor, not present
    mov dword ptr [e_gdt + 0x38], eax   # (keystone turns [e_gdt + E_NP_TSS] into [0x38])
    mov eax, dword ptr [e_gdt + 0x2c]
    and eax, 0xffff7fff
    mov dword ptr [e_gdt + 0x3c], eax
    mov eax, e_landed                   # the call gate's offset
    mov word ptr [e_gdt + 0x48], ax
    shr eax, 0x10
    mov word ptr [e_gdt + 0x4e], ax
    mov eax, e_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]

    mov ebp, e_cases
e_next:
    mov esi, dword ptr [ebp]
    test esi, esi
    jz e_done
    call puts
    mov dword ptr [e_saved_esp], esp
    call dword ptr [ebp + 4]            # never returns: it faults, or ends in ud2
e_resume:
    cmp dword ptr [e_vector], 6
    jne e_fault
    mov esi, e_nofault_msg
    call puts
    jmp e_line_done
e_fault:
    mov esi, e_vector_msg
    call puts
    mov eax, dword ptr [e_vector]
    call putdec
    mov esi, e_error_msg
    call puts
    mov eax, dword ptr [e_error]
    call puthex32
    mov esi, e_eip_msg
    call puts
    mov eax, dword ptr [e_eip]
    sub eax, dword ptr [ebp + 8]
    call puthex32
e_line_done:
    call putnl
    add ebp, 12
    jmp e_next
e_done:
    mov al, 0
    ret

# ---- the cases: each runs its instruction at the site label --------------------------------
c_iret_beyond:
    push 0x2                            # EFLAGS
    push 0x60                           # CS beyond the GDT limit
    mov eax, e_landed
    push eax
s_iret_beyond:
    iretd

c_iret_np:
    push 0x2
    mov eax, E_NP_CODE                  # (keystone: `push SYMBOL` would be a 16-bit push)
    push eax
    mov eax, e_landed
    push eax
s_iret_np:
    iretd

c_iret_data:
    push 0x2
    push 0x10                           # a data segment as CS
    mov eax, e_landed
    push eax
s_iret_data:
    iretd

c_iret_null:
    push 0x2
    push 0x0
    mov eax, e_landed
    push eax
s_iret_null:
    iretd

c_iret_ss:
    push 0x63                           # SS beyond the GDT limit, RPL 3
    push 0x0
    push 0x2
    push 0x1b                           # ring-3 code: the return pops SS:ESP too
    mov eax, e_landed
    push eax
s_iret_ss:
    iretd

c_ltr_data:
    mov eax, 0x10
s_ltr_data:
    ltr ax
    ud2

c_ltr_np:
    mov eax, E_NP_TSS
s_ltr_np:
    ltr ax
    ud2

c_ltr_beyond:
    mov eax, 0x60
s_ltr_beyond:
    ltr ax
    ud2

c_ltr_ldt:
    mov eax, 0x2c
s_ltr_ldt:
    ltr ax
    ud2

c_ltr_ok:
    mov eax, 0x28
s_ltr_ok:
    ltr ax
    ud2

c_ltr_busy:
    mov eax, 0x28
s_ltr_busy:
    ltr ax
    ud2

c_lldt_data:
    mov eax, 0x10
s_lldt_data:
    lldt ax
    ud2

c_lcall_beyond:
s_lcall_beyond:
    .byte 0x9a; .long e_landed; .word 0x60      # call far 0x60:e_landed
    ud2

c_lcall_data:
s_lcall_data:
    .byte 0x9a; .long e_landed; .word 0x10      # call far 0x10:e_landed
    ud2

c_lcall_gate:
s_lcall_gate:
    .byte 0x9a; .long 0; .word 0x48             # call far through the gate at 0x48
    ud2

c_ljmp_limit:
s_ljmp_limit:
    .byte 0xea; .long e_landed; .word 0x50      # jmp far 0x50:e_landed, beyond its limit
    ud2

c_ljmp_np:
s_ljmp_np:
    .byte 0xea; .long e_landed; .word E_NP_CODE # jmp far 0x30:e_landed
    ud2

c_ljmp_beyond:
s_ljmp_beyond:
    .byte 0xea; .long e_landed; .word 0x58      # jmp far 0x58:e_landed
    ud2

c_ss_beyond:
    mov eax, 0x60
s_ss_beyond:
    mov ss, eax
    ud2

c_ss_code:
    mov eax, 0x08
s_ss_code:
    mov ss, eax
    ud2

c_ss_dpl3:
    mov eax, 0x23
s_ss_dpl3:
    mov ss, eax
    ud2

c_ss_np:
    mov eax, E_NP_DATA
s_ss_np:
    mov ss, eax
    ud2

c_ss_ldt:
    mov eax, 0x0c
s_ss_ldt:
    mov ss, eax
    ud2

c_ss_null:
    xor eax, eax
s_ss_null:
    mov ss, eax
    ud2

c_ds_np:
    mov eax, E_NP_DATA
s_ds_np:
    mov ds, eax
    ud2

c_ds_beyond:
    mov eax, 0x58
s_ds_beyond:
    mov ds, eax
    ud2

e_landed:                               # a far transfer that did not fault lands here
    ud2

# ---- handlers: record vector, error code, frame EIP; back to e_resume on the saved stack ----
e_h0:
    push -1
    push 0
    jmp e_common
e_h6:
    push -1
    push 6
    jmp e_common
e_h8:
    push 8
    jmp e_common
e_h10:
    push 10
    jmp e_common
e_h11:
    push 11
    jmp e_common
e_h12:
    push 12
    jmp e_common
e_h13:
    push 13
    jmp e_common
e_h14:
    push 14
    jmp e_common
e_common:
    pop eax
    mov dword ptr [e_vector], eax
    pop eax
    mov dword ptr [e_error], eax
    mov eax, dword ptr [esp]
    mov dword ptr [e_eip], eax
    mov esp, dword ptr [e_saved_esp]
    jmp e_resume

.balign 4, 0
e_cases:
    .long m_iret_beyond, c_iret_beyond, s_iret_beyond
    .long m_iret_np, c_iret_np, s_iret_np
    .long m_iret_data, c_iret_data, s_iret_data
    .long m_iret_null, c_iret_null, s_iret_null
    .long m_iret_ss, c_iret_ss, s_iret_ss
    .long m_ltr_data, c_ltr_data, s_ltr_data
    .long m_ltr_np, c_ltr_np, s_ltr_np
    .long m_ltr_beyond, c_ltr_beyond, s_ltr_beyond
    .long m_ltr_ldt, c_ltr_ldt, s_ltr_ldt
    .long m_ltr_ok, c_ltr_ok, s_ltr_ok
    .long m_ltr_busy, c_ltr_busy, s_ltr_busy
    .long m_lldt_data, c_lldt_data, s_lldt_data
    .long m_lcall_beyond, c_lcall_beyond, s_lcall_beyond
    .long m_lcall_data, c_lcall_data, s_lcall_data
    .long m_lcall_gate, c_lcall_gate, s_lcall_gate
    .long m_ljmp_limit, c_ljmp_limit, s_ljmp_limit
    .long m_ljmp_np, c_ljmp_np, s_ljmp_np
    .long m_ljmp_beyond, c_ljmp_beyond, s_ljmp_beyond
    .long m_ss_beyond, c_ss_beyond, s_ss_beyond
    .long m_ss_code, c_ss_code, s_ss_code
    .long m_ss_dpl3, c_ss_dpl3, s_ss_dpl3
    .long m_ss_np, c_ss_np, s_ss_np
    .long m_ss_ldt, c_ss_ldt, s_ss_ldt
    .long m_ss_null, c_ss_null, s_ss_null
    .long m_ds_np, c_ds_np, s_ds_np
    .long m_ds_beyond, c_ds_beyond, s_ds_beyond
    .long 0, 0, 0

e_saved_esp: .long 0
e_vector:    .long 0
e_error:     .long 0
e_eip:       .long 0

.balign 8, 0
e_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0x0000ffff, 0x00cf1a00        # 0x30 ring-0 code, not present
    .long 0x00000000, 0x00000000        # 0x38 TSS, not present (filled in by main)
    .long 0x0000ffff, 0x00cf1200        # 0x40 ring-0 data, not present
    .long 0x00600000, 0x00008c00        # 0x48 call gate, DPL 0, to 0x60 (offset filled in)
    .long 0x00000fff, 0x00409a00        # 0x50 ring-0 code, limit 0xfff (bytes)
e_gdt_end:
.balign 4, 0
    .word 0
e_gdt_ptr:
    .word e_gdt_end - e_gdt - 1
    .long e_gdt

e_name:          .asciz "errcode\n"
e_vector_msg:    .asciz "vector "
e_error_msg:     .asciz " error "
e_eip_msg:       .asciz " eip-site "
e_nofault_msg:   .asciz "no fault"
m_iret_beyond:   .asciz "iretd to CS 0x60 (beyond the GDT limit): "
m_iret_np:       .asciz "iretd to CS 0x30 (code, not present): "
m_iret_data:     .asciz "iretd to CS 0x10 (a data segment): "
m_iret_null:     .asciz "iretd to CS 0 (null): "
m_iret_ss:       .asciz "iretd to ring 3 with SS 0x63 (beyond the limit): "
m_ltr_data:      .asciz "ltr 0x10 (a data segment): "
m_ltr_np:        .asciz "ltr 0x38 (TSS, not present): "
m_ltr_beyond:    .asciz "ltr 0x60 (beyond the GDT limit): "
m_ltr_ldt:       .asciz "ltr 0x2c (TI=1, the LDT): "
m_ltr_ok:        .asciz "ltr 0x28 (available TSS): "
m_ltr_busy:      .asciz "ltr 0x28 again (now busy): "
m_lldt_data:     .asciz "lldt 0x10 (not an LDT): "
m_lcall_beyond:  .asciz "lcall 0x60:x (beyond the GDT limit): "
m_lcall_data:    .asciz "lcall 0x10:x (a data segment): "
m_lcall_gate:    .asciz "lcall 0x48 (call gate to CS 0x60, beyond the limit): "
m_ljmp_limit:    .asciz "ljmp 0x50:x (EIP beyond the CS limit): "
m_ljmp_np:       .asciz "ljmp 0x30:x (code, not present): "
m_ljmp_beyond:   .asciz "ljmp 0x58:x (beyond the GDT limit): "
m_ss_beyond:     .asciz "mov ss, 0x60 (beyond the GDT limit): "
m_ss_code:       .asciz "mov ss, 0x08 (a code segment): "
m_ss_dpl3:       .asciz "mov ss, 0x23 (RPL and DPL 3 at CPL 0): "
m_ss_np:         .asciz "mov ss, 0x40 (data, not present): "
m_ss_ldt:        .asciz "mov ss, 0x0c (TI=1, null LDT): "
m_ss_null:       .asciz "mov ss, 0 (null): "
m_ds_np:         .asciz "mov ds, 0x40 (data, not present): "
m_ds_beyond:     .asciz "mov ds, 0x58 (beyond the GDT limit): "

.include "runtime.S"
