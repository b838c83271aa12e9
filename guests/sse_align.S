# sse_align.S - which SSE instructions demand a 16-byte aligned memory operand.
#
# A legacy SSE instruction that reads or writes a whole xmmword (movaps, movdqa, paddd, movntps,
# ...) raises #GP(0) when the operand's *linear* address (segment base + offset) is not a
# multiple of 16; movups, movdqu and lddqu do not, nor do the scalar forms (addss reads 4
# bytes). With CR4.OSFXSR clear, every SSE instruction is #UD instead. QEMU 7.2 does all of
# this; the QEMU 5.0 inside Unicorn has no alignment check at all, so a monitor must add it.
# Each case runs one instruction (after a few others in the same block, where noted) at CPL 0
# with IF=0; the #GP and #UD handlers record vector, error code and frame EIP, then resume the
# kernel on its saved stack. A case that does not fault ends in `int 0x40` ("no fault"). The
# line shows the vector, the error code and the frame EIP relative to the instruction, and, for
# the stores, the first dword at the target (a refused store writes nothing). No paging.
# hvsim: block-counting (the alignment check is the native block hook's; count= lacks it)

main:
    mov esi, a_name
    call puts
    mov al, 0xff                        # no device interrupts in this guest
    out 0x21, al
    out 0xa1, al
    mov eax, 6
    mov ebx, a_h6
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 7
    mov ebx, a_h7
    call idt_set_gate
    mov eax, 13
    mov ebx, a_h13
    call idt_set_gate
    mov eax, 0x40
    mov ebx, a_h40
    call idt_set_gate
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors, then a data segment
    mov edi, a_gdt                      # at 0x30 whose base is 8
    mov ecx, 0xc
a_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz a_copy
    mov eax, a_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]

    mov eax, cr0                        # x87/SSE present: EM clear, MP set, TS clear
    and eax, 0xfffffff3
    or eax, 2
    mov cr0, eax

    mov ebp, a_cases
a_next:
    mov esi, dword ptr [ebp]
    test esi, esi
    jz a_done
    call puts
    mov dword ptr [a_saved_esp], esp
    mov dword ptr [a_buf], 0x11111111   # the stores' targets start the same every time
    mov dword ptr [a_buf + 4], 0x11111111
    mov dword ptr [a_buf + 8], 0x11111111
    call dword ptr [ebp + 4]            # never returns: it faults, or ends in int 0x40
a_resume:
    cmp dword ptr [a_vector], 0x40
    jne a_fault
    mov esi, a_nofault_msg
    call puts
    jmp a_store
a_fault:
    mov esi, a_vector_msg
    call puts
    mov eax, dword ptr [a_vector]
    call putdec
    mov esi, a_error_msg
    call puts
    mov eax, dword ptr [a_error]
    call puthex32
    mov esi, a_eip_msg
    call puts
    mov eax, dword ptr [a_eip]
    sub eax, dword ptr [ebp + 8]
    call puthex32
a_store:
    mov eax, dword ptr [ebp + 12]       # a store case: what is at its target now
    test eax, eax
    jz a_line_done
    mov esi, a_mem_msg
    call puts
    mov eax, dword ptr [eax]
    call puthex32
a_line_done:
    mov esi, a_ecx_msg                  # ECX: how far the block ran before the instruction
    call puts
    mov eax, dword ptr [a_ecx]
    call putdec
    call putnl
    add ebp, 16
    jmp a_next
a_done:
    call a_loop
    mov al, 0
    ret

# 1000 aligned movaps loads and stores in one block: no fault, and the copy is right.
a_loop:
    mov esi, a_loop_msg
    call puts
    mov ecx, 1000
    xor edx, edx
a_loop_top:
    mov dword ptr [a_buf], ecx
    movaps xmm3, xmmword ptr [a_buf]
    movaps xmmword ptr [a_buf + 16], xmm3
    add edx, dword ptr [a_buf + 16]
    dec ecx
    jnz a_loop_top
    mov eax, edx
    call putdec
    call putnl
    ret

# ---- the cases: each runs its instruction at the site label ---------------------------------
c_ud_noosfxsr:
    xor ecx, ecx
s_ud_noosfxsr:
    movups xmm0, xmmword ptr [a_buf]
    int 0x40

c_osfxsr:                               # from here on SSE is enabled
    mov eax, cr4
    or eax, 0x200
    mov cr4, eax
    xor ecx, ecx
s_osfxsr:
    movups xmm0, xmmword ptr [a_buf + 8]
    int 0x40

c_movaps_ok:
    xor ecx, ecx
s_movaps_ok:
    movaps xmm1, xmmword ptr [a_buf]
    int 0x40

c_movaps_load:
    xor ecx, ecx
    inc ecx
    inc ecx
    inc ecx
s_movaps_load:
    movaps xmm1, xmmword ptr [a_buf + 8]
    inc ecx
    int 0x40

c_movaps_store:
    xor ecx, ecx
    inc ecx
s_movaps_store:
    movaps xmmword ptr [a_buf + 4], xmm1
    inc ecx
    int 0x40

c_movaps_store_ok:
    xor ecx, ecx
    pxor xmm1, xmm1
s_movaps_store_ok:
    movaps xmmword ptr [a_buf], xmm1
    int 0x40

c_movdqa:
    xor ecx, ecx
    mov eax, a_buf + 1
s_movdqa:
    movdqa xmm2, xmmword ptr [eax]
    int 0x40

c_movdqu:
    xor ecx, ecx
    mov eax, a_buf + 1
s_movdqu:
    movdqu xmm2, xmmword ptr [eax]
    int 0x40

c_lddqu:
    xor ecx, ecx
    mov eax, a_buf + 3
s_lddqu:
    lddqu xmm2, xmmword ptr [eax]
    int 0x40

c_paddd:
    xor ecx, ecx
s_paddd:
    paddd xmm0, xmmword ptr [a_buf + 8]
    int 0x40

c_addps:
    xor ecx, ecx
    mov ebx, 2
s_addps:
    addps xmm0, xmmword ptr [a_buf + ebx * 4]
    int 0x40

c_addss:
    xor ecx, ecx
s_addss:
    addss xmm0, dword ptr [a_buf + 1]
    int 0x40

c_movntps:
    xor ecx, ecx
s_movntps:
    movntps xmmword ptr [a_buf + 8], xmm0
    int 0x40

c_segbase:                              # offset aligned, linear address not: base 8
    xor ecx, ecx
    mov eax, 0x30
    mov fs, eax
s_segbase:
    movaps xmm1, xmmword ptr fs:[a_buf]
    int 0x40

c_segbase_ok:                           # offset misaligned, linear address aligned
    xor ecx, ecx
    mov eax, 0x30
    mov fs, eax
s_segbase_ok:
    movaps xmm1, xmmword ptr fs:[a_buf + 8]
    int 0x40

c_stack:                                # through SS, from ESP
    xor ecx, ecx
    mov eax, esp
    and esp, 0xfffffff0
    sub esp, 0x24
s_stack:
    movaps xmm1, xmmword ptr [esp + 4]
    int 0x40

c_ts:                                   # CR0.TS: #NM comes before any alignment check
    xor ecx, ecx
    mov eax, cr0
    or eax, 8
    mov cr0, eax
s_ts:
    movaps xmm1, xmmword ptr [a_buf + 8]
    int 0x40

# ---- handlers: record vector, error code, frame EIP; back to a_resume on the saved stack ----
a_h6:
    push -1
    push 6
    jmp a_common
a_h7:
    push -1
    push 7
    jmp a_common
a_h13:
    push 13
    jmp a_common
a_h40:
    push -1
    push 0x40
a_common:
    mov dword ptr [a_ecx], ecx
    pop eax
    mov dword ptr [a_vector], eax
    pop eax
    mov dword ptr [a_error], eax
    mov eax, dword ptr [esp]
    mov dword ptr [a_eip], eax
    mov esp, dword ptr [a_saved_esp]
    mov eax, 0x10
    mov fs, eax
    clts                                # c_ts leaves TS set: clear it for the next case
    jmp a_resume

.balign 4, 0
a_cases:                                # message, case, site, store target (0: not a store)
    .long m_ud_noosfxsr, c_ud_noosfxsr, s_ud_noosfxsr, 0
    .long m_osfxsr, c_osfxsr, s_osfxsr, 0
    .long m_movaps_ok, c_movaps_ok, s_movaps_ok, 0
    .long m_movaps_load, c_movaps_load, s_movaps_load, 0
    .long m_movaps_store, c_movaps_store, s_movaps_store, a_buf + 4
    .long m_movaps_store_ok, c_movaps_store_ok, s_movaps_store_ok, a_buf
    .long m_movdqa, c_movdqa, s_movdqa, 0
    .long m_movdqu, c_movdqu, s_movdqu, 0
    .long m_lddqu, c_lddqu, s_lddqu, 0
    .long m_paddd, c_paddd, s_paddd, 0
    .long m_addps, c_addps, s_addps, 0
    .long m_addss, c_addss, s_addss, 0
    .long m_movntps, c_movntps, s_movntps, a_buf + 8
    .long m_segbase, c_segbase, s_segbase, 0
    .long m_segbase_ok, c_segbase_ok, s_segbase_ok, 0
    .long m_stack, c_stack, s_stack, 0
    .long m_ts, c_ts, s_ts, 0
    .long 0, 0, 0, 0

a_saved_esp: .long 0
a_vector:    .long 0
a_error:     .long 0
a_eip:       .long 0
a_ecx:       .long 0

.balign 16, 0
a_buf:
    .fill 0x40, 1, 0

.balign 8, 0
a_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0x0008ffff, 0x00cf9200        # 0x30 ring-0 data, base 8, limit 4 GiB
a_gdt_end:
.balign 4, 0
    .word 0
a_gdt_ptr:
    .word a_gdt_end - a_gdt - 1
    .long a_gdt

a_name:            .asciz "sse_align\n"
a_vector_msg:      .asciz "vector "
a_error_msg:       .asciz " error "
a_eip_msg:         .asciz " eip-site "
a_mem_msg:         .asciz " mem "
a_ecx_msg:         .asciz " ecx "
a_nofault_msg:     .asciz "no fault"
a_loop_msg:        .asciz "1000 aligned movaps copies, sum "
m_ud_noosfxsr:     .asciz "movups with CR4.OSFXSR clear: "
m_osfxsr:          .asciz "movups [buf+8] with OSFXSR set: "
m_movaps_ok:       .asciz "movaps xmm1, [buf]: "
m_movaps_load:     .asciz "movaps xmm1, [buf+8] after 3 incs: "
m_movaps_store:    .asciz "movaps [buf+4], xmm1: "
m_movaps_store_ok: .asciz "movaps [buf], xmm1: "
m_movdqa:          .asciz "movdqa xmm2, [buf+1]: "
m_movdqu:          .asciz "movdqu xmm2, [buf+1]: "
m_lddqu:           .asciz "lddqu xmm2, [buf+3]: "
m_paddd:           .asciz "paddd xmm0, [buf+8]: "
m_addps:           .asciz "addps xmm0, [buf+ebx*4], ebx=2: "
m_addss:           .asciz "addss xmm0, dword [buf+1]: "
m_movntps:         .asciz "movntps [buf+8], xmm0: "
m_segbase:         .asciz "movaps xmm1, fs:[buf] (fs base 8): "
m_segbase_ok:      .asciz "movaps xmm1, fs:[buf+8] (fs base 8): "
m_stack:           .asciz "movaps xmm1, [esp+4] (esp 16-aligned): "
m_ts:              .asciz "movaps xmm1, [buf+8] with CR0.TS set: "

.include "runtime.S"
