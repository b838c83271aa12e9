# ldt.S - a local descriptor table: lldt, segment loads through it, edits after lldt, ring 3.
#
# Under trap the CPU never sees the guest's descriptors: it sees the monitor's checked copies, with
# the kernel's DPL 0 compressed into ring 1. For the GDT that copy has long existed; this guest
# makes the LDT need one too. The kernel copies the runtime's GDT and adds an LDT descriptor at
# 0x30 (base l_ldt, four entries) and a not-present one at 0x38, then, one line each:
#   - lldt 0x30 and sldt: the LDTR the guest loaded (sldt does not trap; the monitor keeps the
#     real LDTR selector the guest's);
#   - mov ds, 0x04 (LDT entry 0: data at base 0x300000) and a read through it;
#   - the entry's base changed to 0x301000 in memory after lldt, ds reloaded: the CPU reads
#     descriptors at every load, so the new base is seen (the monitor write-protects the LDT);
#   - a far jump to LDT code (0x0c, ring 0) and back;
#   - ring 3 through iretd with LDT code 0x1f and stack 0x17, a read through ds = 0x17 there,
#     and int 0x80 back to the kernel;
#   - faults with their error codes: ds = 0x24 (beyond the LDT limit: #GP 0x24), ds = 0x14 with
#     entry 2 made not present (#NP 0x14), lldt 0x38 (not present: #NP 0x38).
# No paging.

main:
    mov esi, l_name
    call puts
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    mov eax, 11
    mov ebx, l_h11
    mov cl, 0x8e
    call idt_set_gate
    mov eax, 13
    mov ebx, l_h13
    call idt_set_gate
    mov eax, 0x80
    mov ebx, l_h80
    mov cl, 0xee                        # DPL 3: ring 3 comes back with int 0x80
    call idt_set_gate
    call idt_load

    mov esi, gdt                        # the runtime's six descriptors, TSS included
    mov edi, l_gdt
    mov ecx, 0xc
l_copy:
    mov eax, dword ptr [esi]
    mov dword ptr [edi], eax
    add esi, 4
    add edi, 4
    dec ecx
    jnz l_copy
    mov eax, l_ldt                      # 0x30: LDT at l_ldt, limit 0x1f, present
    mov word ptr [l_gdt + 0x32], ax
    shr eax, 0x10
    mov byte ptr [l_gdt + 0x34], al
    mov byte ptr [l_gdt + 0x37], ah
    mov eax, l_gdt_ptr
    .byte 0x0f, 0x01, 0x10              # lgdt [eax]
    mov eax, 0x28                       # the runtime's TSS: ring 3's int 0x80 needs its SS0:ESP0
    ltr ax
    mov dword ptr [0x300000], 0x11111111
    mov dword ptr [0x301000], 0x22222222

    mov eax, 0x30
    lldt ax
    sldt ax
    and eax, 0xffff
    mov esi, l_sldt
    call put_kv_hex

    mov eax, 0x04
    mov ds, eax
    mov ebx, dword ptr [0]
    mov eax, 0x10
    mov ds, eax
    mov eax, ebx
    mov esi, l_read
    call put_kv_hex

    mov byte ptr [l_ldt + 3], 0x10      # entry 0's base: 0x300000 -> 0x301000
    mov eax, 0x04
    mov ds, eax
    mov ebx, dword ptr [0]
    mov eax, 0x10
    mov ds, eax
    mov eax, ebx
    mov esi, l_edited
    call put_kv_hex

    .byte 0xea; .long l_in_ldt_code; .word 0x0c      # jmp far 0x0c:l_in_ldt_code
l_in_ldt_code:
    .byte 0xea; .long l_back; .word 0x08             # and back to the GDT's code
l_back:
    mov esi, l_farjmp
    call puts

    mov dword ptr [l_saved_esp], esp
    push 0x17                           # SS: LDT entry 2, ring 3
    push 0x2ff0
    push 0x2
    push 0x1f                           # CS: LDT entry 3, ring 3
    mov eax, l_user
    push eax
    iretd
l_user:
    mov eax, 0x17
    mov ds, eax
    mov ebx, dword ptr [0x301000]
    int 0x80
l_user_back:
    mov eax, ebx
    mov esi, l_ring3
    call put_kv_hex

    mov dword ptr [l_resume], l_after_gp
    mov eax, 0x24
    mov ds, eax
l_after_gp:
    and byte ptr [l_ldt + 0x15], 0x7f
    mov dword ptr [l_resume], l_after_np
    mov eax, 0x14
    mov ds, eax
l_after_np:
    mov dword ptr [l_resume], l_after_lldt
    mov eax, 0x38
    lldt ax
l_after_lldt:
    mov eax, 0x10
    mov ds, eax
    mov al, 0
    ret

# ---- handlers ---------------------------------------------------------------------------------
l_h80:                                  # from ring 3: back to the kernel on its stack
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov esp, dword ptr [l_saved_esp]
    jmp l_user_back
l_h11:
    mov esi, l_np
    jmp l_fault
l_h13:
    mov esi, l_gp
l_fault:
    mov eax, 0x10
    mov ds, eax
    call puts
    pop eax                             # the error code
    call puthex32
    call putnl
    mov eax, dword ptr [l_resume]
    mov dword ptr [esp], eax            # resume after the faulting instruction
    iretd

.balign 8, 0
l_ldt:
    .long 0x0000ffff, 0x00cf9230        # 0x04: data, base 0x300000, DPL 0
    .long 0x0000ffff, 0x00cf9a00        # 0x0c: code, base 0, DPL 0
    .long 0x0000ffff, 0x00cff200        # 0x14: data, base 0, DPL 3
    .long 0x0000ffff, 0x00cffa00        # 0x1c: code, base 0, DPL 3
l_ldt_end:

.balign 8, 0
l_gdt:
    .fill 0x30, 1, 0                    # 0x00-0x28: copied from the runtime's GDT
    .long 0x0000001f, 0x00008200        # 0x30: the LDT (base filled in by main)
    .long 0x0000001f, 0x00000200        # 0x38: an LDT, not present
l_gdt_end:
.balign 4, 0
    .word 0
l_gdt_ptr:
    .word l_gdt_end - l_gdt - 1
    .long l_gdt

l_saved_esp: .long 0
l_resume:    .long 0

l_name:   .asciz "ldt\n"
l_sldt:   .asciz "lldt 0x30, sldt: "
l_read:   .asciz "ds = 0x04 (base 0x300000), [0]: "
l_edited: .asciz "entry 0 edited to base 0x301000, ds reloaded, [0]: "
l_farjmp: .asciz "jmp far to LDT code 0x0c and back\n"
l_ring3:  .asciz "ring 3 through LDT code 0x1f and stack 0x17, ds = 0x17, [0x301000]: "
l_gp:     .asciz "#GP, error "
l_np:     .asciz "#NP, error "

.include "runtime.S"
