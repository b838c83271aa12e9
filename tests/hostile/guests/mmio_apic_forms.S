# mmio_apic_forms.S - the local APIC's TPR (0xfee00080) through every instruction form that
# reads or writes memory.
#
# An MMIO model that only expects `mov r32, [m]` and `mov [m], r32` meets, in a real kernel or a
# hostile one, every other form: movzx/movsx of a byte or word (QEMU hands the APIC no access
# narrower than 4 bytes: they read 0), read-modify-write ALU forms, inc/dec/not/neg, xchg,
# cmpxchg, a locked or, bt/bts/btr with an immediate and with a register offset that reaches the
# next dword (0x84, which the APIC decodes as TPR again, and 0x7c, a reserved offset), push/pop
# of a memory operand, rep movsd out of the APIC (TPR, ARBPRI and PPR, four dwords each: the
# APIC decodes offsets by bits 4-11), rep stosd of one dword, cmp and test, lodsd/stosd with
# DF=0 and DF=1. Then the same for a full 32-bit register, LVT thermal (0x330), which QEMU stores
# whole. TPR keeps bits 0-7 of what is written. Each line prints, after the instruction, TPR (or
# LVT thermal), EFLAGS masked to OF|SF|ZF|CF (0x8c1) and EAX. IF stays 0.

main:
    call hv_setup
    mov esi, f_name
    call puts
    mov ecx, 0x3c
    mov dword ptr [0xfee00080], 0x5a
    mov eax, dword ptr [0xfee00080]
    mov esi, f_mov
    call f_step
    mov dword ptr [0xfee00080], ecx
    mov eax, ecx
    mov esi, f_movr
    call f_step
    mov dword ptr [0xfee00080], 0xc3
    movzx eax, byte ptr [0xfee00080]
    mov esi, f_movzxb
    call f_step
    movsx eax, byte ptr [0xfee00080]
    mov esi, f_movsxb
    call f_step
    movzx eax, word ptr [0xfee00080]
    mov esi, f_movzxw
    call f_step
    movsx eax, word ptr [0xfee00080]
    mov esi, f_movsxw
    call f_step
    xor eax, eax
    add dword ptr [0xfee00080], 0x11
    mov esi, f_add
    call f_step
    or dword ptr [0xfee00080], 0x0f
    mov esi, f_or
    call f_step
    and dword ptr [0xfee00080], 0xf0
    mov esi, f_and
    call f_step
    xor dword ptr [0xfee00080], 0xff
    mov esi, f_xor
    call f_step
    sub dword ptr [0xfee00080], 0x100
    mov esi, f_sub
    call f_step
    inc dword ptr [0xfee00080]
    mov esi, f_inc
    call f_step
    dec dword ptr [0xfee00080]
    mov esi, f_dec
    call f_step
    not dword ptr [0xfee00080]
    mov esi, f_not
    call f_step
    neg dword ptr [0xfee00080]
    mov esi, f_neg
    call f_step
    mov eax, 0x99
    xchg dword ptr [0xfee00080], eax
    mov esi, f_xchg
    call f_step
    mov eax, 0x99
    mov ecx, 0x42
    cmpxchg dword ptr [0xfee00080], ecx
    mov esi, f_cmpxchg1
    call f_step
    mov ecx, 0x17
    cmpxchg dword ptr [0xfee00080], ecx
    mov esi, f_cmpxchg2
    call f_step
    lock or dword ptr [0xfee00080], 0x81
    mov esi, f_lockor
    call f_step
    bt dword ptr [0xfee00080], 7
    mov esi, f_bt
    call f_step
    bts dword ptr [0xfee00080], 2
    mov esi, f_bts
    call f_step
    btr dword ptr [0xfee00080], 0
    mov esi, f_btr
    call f_step
    mov eax, 0x24
    bts dword ptr [0xfee00080], eax
    mov esi, f_btsr
    call f_step
    mov eax, 0xffffffff
    bts dword ptr [0xfee00080], eax
    mov esi, f_btsm
    call f_step
    push dword ptr [0xfee00080]
    pop eax
    mov esi, f_push
    call f_step
    push 0x6d
    pop dword ptr [0xfee00080]
    mov esi, f_pop
    call f_step

    mov esi, 0xfee00080
    mov edi, f_buf
    mov ecx, 0x0c
    cld
    .byte 0xf3, 0xa5                    # rep movsd (keystone rejects the mnemonic)
    mov eax, esi
    mov esi, f_movs
    call f_step
    mov esi, f_buf
    mov ecx, 0x0c
f_movs_print:
    mov al, 0x20
    call putc
    .byte 0xad                          # lodsd
    call puthex32
    dec ecx
    jnz f_movs_print
    call putnl
    mov eax, 0x44
    mov edi, 0xfee00080
    mov ecx, 1
    .byte 0xf3, 0xab                    # rep stosd
    mov eax, edi
    mov esi, f_stos
    call f_step
    cmp dword ptr [0xfee00080], 0x44
    mov esi, f_cmpeq
    call f_step
    cmp dword ptr [0xfee00080], 0x45
    mov esi, f_cmplt
    call f_step
    test dword ptr [0xfee00080], 0x40
    mov esi, f_test1
    call f_step
    test dword ptr [0xfee00080], 0x80
    mov esi, f_test0
    call f_step
    mov esi, 0xfee00080
    .byte 0xad                          # lodsd
    mov dword ptr [f_esi], esi
    mov esi, f_lods
    call f_step
    mov eax, dword ptr [f_esi]
    mov esi, f_esi_is
    call put_kv_hex
    std
    mov esi, 0xfee00080
    .byte 0xad                          # lodsd
    mov dword ptr [f_esi], esi
    mov esi, f_lodsd1
    call f_step
    mov eax, dword ptr [f_esi]
    mov esi, f_esi_is
    call put_kv_hex
    mov eax, 0x2e
    mov edi, 0xfee00080
    .byte 0xab                          # stosd
    cld
    mov eax, edi
    mov esi, f_stosd1
    call f_step

    mov dword ptr [f_reg], 0xfee00330
    mov dword ptr [0xfee00330], 0x89abcdef
    add dword ptr [0xfee00330], 0x76543211
    mov esi, f_tadd
    call f_step
    not dword ptr [0xfee00330]
    mov esi, f_tnot
    call f_step
    mov eax, 0x01234567
    xchg dword ptr [0xfee00330], eax
    mov esi, f_txchg
    call f_step
    btc dword ptr [0xfee00330], 0x1f
    mov esi, f_tbtc
    call f_step
    mov al, 0
    ret

# ESI = label: prints "label: reg 0x........ flags 0x........ eax 0x........", where reg is the
# register at [f_reg] (TPR until the LVT thermal part) and flags are EFLAGS as the step left them.
f_step:
    pushfd
    call puts
    push esi
    push eax
    mov esi, f_reg_is
    call puts
    mov eax, dword ptr [f_reg]
    mov eax, dword ptr [eax]
    call puthex32
    mov esi, f_flags_is
    call puts
    mov eax, dword ptr [esp + 8]
    and eax, 0x8c1
    call puthex32
    mov esi, f_eax_is
    call puts
    pop eax
    call puthex32
    call putnl
    pop esi
    popfd
    ret

.balign 4, 0
f_reg:  .long 0xfee00080
f_esi:  .long 0
f_buf:  .fill 0x30, 1, 0
f_name:     .asciz "mmio_apic_forms\n"
f_reg_is:   .asciz ": reg "
f_flags_is: .asciz " flags "
f_eax_is:   .asciz " eax "
f_esi_is:   .asciz "kernel: esi after it "
f_mov:      .asciz "kernel: mov [tpr], 0x5a; mov eax, [tpr]"
f_movr:     .asciz "kernel: mov [tpr], ecx=0x3c"
f_movzxb:   .asciz "kernel: tpr = 0xc3; movzx eax, byte [tpr]"
f_movsxb:   .asciz "kernel: movsx eax, byte [tpr]"
f_movzxw:   .asciz "kernel: movzx eax, word [tpr]"
f_movsxw:   .asciz "kernel: movsx eax, word [tpr]"
f_add:      .asciz "kernel: add [tpr], 0x11"
f_or:       .asciz "kernel: or [tpr], 0x0f"
f_and:      .asciz "kernel: and [tpr], 0xf0"
f_xor:      .asciz "kernel: xor [tpr], 0xff"
f_sub:      .asciz "kernel: sub [tpr], 0x100"
f_inc:      .asciz "kernel: inc [tpr]"
f_dec:      .asciz "kernel: dec [tpr]"
f_not:      .asciz "kernel: not [tpr]"
f_neg:      .asciz "kernel: neg [tpr]"
f_xchg:     .asciz "kernel: xchg [tpr], eax=0x99"
f_cmpxchg1: .asciz "kernel: cmpxchg [tpr], ecx=0x42 with eax=0x99"
f_cmpxchg2: .asciz "kernel: cmpxchg [tpr], ecx=0x17 with eax=0x99"
f_lockor:   .asciz "kernel: lock or [tpr], 0x81"
f_bt:       .asciz "kernel: bt [tpr], 7"
f_bts:      .asciz "kernel: bts [tpr], 2"
f_btr:      .asciz "kernel: btr [tpr], 0"
f_btsr:     .asciz "kernel: bts [tpr], eax=0x24 (bit 4 of 0x84)"
f_btsm:     .asciz "kernel: bts [tpr], eax=-1 (bit 31 of 0x7c)"
f_push:     .asciz "kernel: push [tpr]; pop eax"
f_pop:      .asciz "kernel: push 0x6d; pop [tpr]"
f_movs:     .asciz "kernel: rep movsd 12 dwords from 0x80 (eax = esi after)"
f_stos:     .asciz "kernel: rep stosd eax=0x44 ecx=1 to 0x80 (eax = edi after)"
f_cmpeq:    .asciz "kernel: cmp [tpr], 0x44"
f_cmplt:    .asciz "kernel: cmp [tpr], 0x45"
f_test1:    .asciz "kernel: test [tpr], 0x40"
f_test0:    .asciz "kernel: test [tpr], 0x80"
f_lods:     .asciz "kernel: lodsd from 0x80, DF=0"
f_lodsd1:   .asciz "kernel: lodsd from 0x80, DF=1"
f_stosd1:   .asciz "kernel: stosd eax=0x2e to 0x80, DF=1 (eax = edi after)"
f_tadd:     .asciz "kernel: lvt thermal = 0x89abcdef; add [0x330], 0x76543211"
f_tnot:     .asciz "kernel: not [0x330]"
f_txchg:    .asciz "kernel: xchg [0x330], eax=0x01234567"
f_tbtc:     .asciz "kernel: btc [0x330], 31"

.include "hostile.S"
