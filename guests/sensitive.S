# sensitive.S - the instructions that make x86 unvirtualizable by trap-and-emulate.
#
# Robin & Irvine (2000) listed the x86 instructions that read or change privileged state yet do
# not trap when run outside ring 0, so Popek and Goldberg's theorem fails on x86. Here the kernel
# runs each one that 32-bit protected mode offers, at CPL 0, and prints exactly what it observes.
# On a bare machine (QEMU) the values are the kernel's own: its GDT/IDT/TSS, CPL 0 selectors, a
# popf that really changes IF and IOPL. A monitor that runs this kernel deprivileged (ring 1,
# shadow tables) must make every line come out the same, or the guest can tell it is not alone.
# Header and footer are lines of their own so a diff shows only the sensitive lines.

main:
    mov esi, s_name
    call puts
    # Mask both PICs: the popf lines below set IF, and this guest has no interrupt handlers.
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    call idt_load
    mov eax, SEL_TSS
    ltr ax

    xor eax, eax
    smsw eax                            # CR0's low bits: PE, ET (and TS, MP...) with no trap
    mov esi, s_smsw
    call put_kv_hex

    mov eax, s_table
    .byte 0x0f, 0x01, 0x00              # sgdt [eax]
    mov esi, s_sgdt
    call put_table

    mov eax, s_table
    .byte 0x0f, 0x01, 0x08              # sidt [eax]
    mov esi, s_sidt
    call put_table

    mov eax, 0xffffffff
    sldt eax
    mov esi, s_sldt
    call put_kv_hex

    mov eax, 0xffffffff
    str eax
    mov esi, s_str
    call put_kv_hex

    cli
    pushfd
    pop eax
    mov esi, s_pushf
    call put_if_iopl

    cli
    pushfd
    or dword ptr [esp], 0x200           # IF=1: ignored silently outside ring 0 with IOPL < CPL
    popfd
    pushfd
    pop eax
    cli
    mov esi, s_popf_if
    call put_if_iopl

    pushfd
    or dword ptr [esp], 0x3000          # IOPL=3: only CPL 0 may change it; elsewhere ignored
    popfd
    pushfd
    pop eax
    mov esi, s_popf_iopl
    call put_if_iopl
    pushfd
    and dword ptr [esp], 0xffffcfff     # back to IOPL 0
    popfd

    xor eax, eax
    mov ax, cs                          # the RPL of CS is the CPL: a deprivileged kernel sees it
    mov esi, s_mov_cs
    call put_kv_hex

    .byte 0x0e                          # push cs (keystone would add a 0x66 prefix)
    pop eax
    and eax, 0xffff
    mov esi, s_push_cs
    call put_kv_hex

    xor eax, eax
    mov ax, ss
    mov esi, s_mov_ss
    call put_kv_hex

    mov ecx, cs
    xor eax, eax
    lar eax, ecx                        # access rights of CS, including its DPL
    mov esi, s_lar_cs
    call put_kv_hex

    mov ecx, SEL_KDATA
    xor eax, eax
    lar eax, ecx
    mov esi, s_lar_ds
    call put_kv_hex

    mov ecx, cs
    xor eax, eax
    lsl eax, ecx                        # segment limit: a monitor that shrinks segments shows here
    mov esi, s_lsl_cs
    call put_kv_hex

    mov ecx, SEL_KCODE
    verr cx                             # readable from the current CPL? depends on DPL vs CPL
    mov esi, s_verr_kcode
    call put_zf

    mov ecx, SEL_KDATA
    verw cx
    mov esi, s_verw_kdata
    call put_zf

    mov ecx, SEL_KCODE
    verw cx                             # code is never writable: ZF=0 everywhere
    mov esi, s_verw_kcode
    call put_zf

    mov ecx, SEL_UCODE
    verr cx
    mov esi, s_verr_ucode
    call put_zf

    mov esi, s_done
    call puts
    mov al, 0
    ret

# ESI = label; s_table holds limit (16 bits) then base (32 bits), as sgdt/sidt store them.
put_table:
    call puts
    mov esi, s_base
    mov eax, dword ptr [s_table + 2]
    call puts
    call puthex32
    mov esi, s_limit
    movzx eax, word ptr [s_table]
    call puts
    call puthex32
    jmp putnl

# ESI = label, EAX = EFLAGS: prints "IF=n IOPL=n".
put_if_iopl:
    push eax
    call puts
    mov esi, s_if
    call puts
    shr eax, 9
    and eax, 1
    call putdec
    mov esi, s_iopl
    call puts
    pop eax
    shr eax, 12
    and eax, 3
    call putdec
    jmp putnl

# ESI = label; prints "ZF=n" from the flags as the caller left them.
put_zf:
    setz al
    movzx eax, al
    call puts
    push esi
    mov esi, s_zf
    call puts
    pop esi
    call putdec
    jmp putnl

.balign 4, 0
    .word 0
s_table:     .word 0
             .long 0
s_name:      .asciz "sensitive\n"
s_smsw:      .asciz "smsw: "
s_sgdt:      .asciz "sgdt:"
s_sidt:      .asciz "sidt:"
s_base:      .asciz " base="
s_limit:     .asciz " limit="
s_sldt:      .asciz "sldt: "
s_str:       .asciz "str: "
s_pushf:     .asciz "pushf after cli:"
s_popf_if:   .asciz "popf to set IF:"
s_popf_iopl: .asciz "popf to set IOPL=3:"
s_if:        .asciz " IF="
s_iopl:      .asciz " IOPL="
s_mov_cs:    .asciz "mov ax, cs: "
s_push_cs:   .asciz "push cs: "
s_mov_ss:    .asciz "mov ax, ss: "
s_lar_cs:    .asciz "lar cs: "
s_lar_ds:    .asciz "lar 0x10: "
s_lsl_cs:    .asciz "lsl cs: "
s_verr_kcode: .asciz "verr 0x08:"
s_verw_kdata: .asciz "verw 0x10:"
s_verw_kcode: .asciz "verw 0x08:"
s_verr_ucode: .asciz "verr 0x1b:"
s_zf:        .asciz " ZF="
s_done:      .asciz "sensitive done\n"

.include "runtime.S"
