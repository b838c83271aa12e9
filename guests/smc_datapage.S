# smc_datapage.S - self-modifying code in a page that was data first, written from ring 0 and
# from ring 3.
#
# A page that has only ever held data may be written at full speed, and one that holds code
# must not be: the CPU has to notice when translated code goes stale. The guest keeps a page
# as plain data for a while (many stores), then writes two small functions into it
# (`mov eax, imm32` then `ret`), calls them, rewrites both immediates, and calls them again:
# the second calls must return the new values. Twice:
#   - all at ring 0 (page at 3 MiB),
#   - with the data stores, the code and the rewrites made by a ring-3 program (page at
#     3 MiB + 64 KiB) and the calls made by the kernel, through `int 0x80`. QEMU keeps
#     separate TLB entries for user and kernel accesses, so the ring-3 stores reach the page
#     through an entry the kernel's instruction fetches never touched.
# Each line prints the first function's result in the high word and the second's in the low.

D_PAGE = 0x300000
U_PAGE = 0x310000
SYS_CALL_BOTH = 1
SYS_EXIT = 2

main:
    mov esi, d_name
    call puts
    mov edi, D_PAGE
    call d_scribble
    mov eax, 0x1111
    mov ebx, 0x2222
    call d_write_functions
    call d_call_both
    mov esi, d_k_first
    call put_kv_hex
    mov dword ptr [D_PAGE + 0x101], 0x3333     # the first function's immediate, then the second's
    mov dword ptr [D_PAGE + 0x201], 0x4444
    mov edi, D_PAGE
    call d_call_both
    mov esi, d_k_second
    call put_kv_hex
    # ring 3: the same, through a system call for each pair of calls
    mov eax, 0x80
    mov ebx, d_syscall
    mov cl, 0xee                        # interrupt gate, DPL 3
    call idt_set_gate
    call idt_load
    mov eax, SEL_TSS
    ltr ax
    mov eax, SEL_UDATA
    mov ds, eax
    mov es, eax
    push eax                            # SS
    mov eax, d_ustack_top
    push eax                            # ESP
    push 0x002                          # EFLAGS
    mov eax, SEL_UCODE
    push eax                            # CS
    mov eax, d_user
    push eax                            # EIP
    iretd

# EDI = a page: 8 passes of dword stores over all of it (plain data).
d_scribble:
    push ecx
    push edx
    mov edx, 8
d_scribble_pass:
    xor ecx, ecx
d_scribble_dword:
    mov dword ptr [edi + ecx * 4], ecx
    inc ecx
    cmp ecx, 0x400
    jne d_scribble_dword
    dec edx
    jnz d_scribble_pass
    pop edx
    pop ecx
    ret

# EDI = the page, EAX/EBX = the immediates: `mov eax, imm32` then `ret` at +0x100 and +0x200.
d_write_functions:
    mov byte ptr [edi + 0x100], 0xb8
    mov dword ptr [edi + 0x101], eax
    mov byte ptr [edi + 0x105], 0xc3
    mov byte ptr [edi + 0x200], 0xb8
    mov dword ptr [edi + 0x201], ebx
    mov byte ptr [edi + 0x205], 0xc3
    ret

# EDI = the page: EAX = first() << 16 | second().
d_call_both:
    push ebx
    lea eax, [edi + 0x100]
    call eax
    shl eax, 16
    mov ebx, eax
    lea eax, [edi + 0x200]
    call eax
    or eax, ebx
    pop ebx
    ret

# ---- ring 3 ------------------------------------------------------------------------------
d_user:
    mov edi, U_PAGE
    call d_scribble
    mov eax, 0x5555
    mov ebx, 0x6666
    call d_write_functions
    mov eax, SYS_CALL_BOTH
    int 0x80
    mov dword ptr [U_PAGE + 0x101], 0x7777
    mov dword ptr [U_PAGE + 0x201], 0x8888
    mov eax, SYS_CALL_BOTH
    int 0x80
    mov eax, SYS_EXIT
    int 0x80
d_user_spin:
    jmp d_user_spin

# ---- ring 0: the system call (DS and ES are the user's flat selectors, fine for the kernel)
d_syscall:
    cmp eax, SYS_EXIT
    je d_sys_exit
    pushad
    mov edi, U_PAGE
    call d_call_both
    mov esi, d_u_calls
    call put_kv_hex
    popad
    iretd
d_sys_exit:
    mov al, 0
    jmp exit

d_name:     .asciz "smc_datapage\n"
d_k_first:  .asciz "ring 0 wrote code into its data page: "
d_k_second: .asciz "ring 0 rewrote both immediates: "
d_u_calls:  .asciz "kernel called what ring 3 wrote: "

.balign 16, 0
d_ustack:
    .fill 0x200, 1, 0
d_ustack_top:

.include "runtime.S"
