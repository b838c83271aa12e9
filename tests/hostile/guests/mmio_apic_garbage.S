# mmio_apic_garbage.S - garbage, reserved and misaligned accesses to the local APIC (0xfee00000).
#
# Paging is off, so the addresses below are physical. First the accesses QEMU does not hand to
# the APIC as they are, each followed by ESR (0x280), whose "illegal register address" bit
# (0x80) QEMU sets for a dword access to an offset it does not decode, and never clears (writes
# to ESR are ignored). QEMU gives the APIC dword accesses only: a byte or word read gives 0 and
# a byte or word write is dropped, and so is an 8-byte access (x87 fild/fistp qword); a
# misaligned dword is split into the two aligned dwords around it (0x21 reads 0x20 and 0x24,
# both ID). The kernel reads bytes, words and dwords at 0x21-0x23 (ID, set to 0x12000000 first)
# and at 0x331-0x333 (LVT thermal, set to 0x12345678), writes a byte and a word to TPR (0x80),
# reads ID and writes TPR as qwords, writes ESR, then reads dwords at 0x3fe (across 0x400),
# 0x400 and 0xff0. Then the register file as four tables of the 64 registers 0x000-0x3f0: as
# found, and after writing 0xffffffff, then 0, then 0xa5a5a5a5 to each and reading it back. Not
# written: 0x300 (ICR: 0xa5a5a5a5 is an INIT, and an INIT to self would reset this CPU), 0x310
# (ICR2, with it), 0x380 (the timer's initial count: a count would start the timer), 0xb0 (EOI),
# and 0x000, which QEMU decodes as an MSI (0xa5a5a5a5 there is an INIT too). Last, that MSI on
# purpose: the ID made 0 again, 0 written to 0x000 sets IRR bit 0 on QEMU (vector 0, fixed, to
# APIC ID 0); then, with ID 0x34000000, a read at 0x1020, which QEMU answers as ID: it decodes
# 1 MiB from 0xfee00000 by address bits 4-11 only. IF stays 0 throughout, so no vector the
# garbage names is ever delivered.

main:
    call hv_setup
    mov esi, g_name
    call puts
    fninit
    mov eax, dword ptr [0xfee00280]
    mov esi, g_esr0
    call put_kv_hex
    mov dword ptr [0xfee00020], 0x12000000
    mov dword ptr [0xfee00330], 0x12345678
    mov esi, g_id
    mov eax, dword ptr [0xfee00020]
    call put_kv_hex

    movzx eax, byte ptr [0xfee00021]
    mov esi, g_b21
    call g_line
    movzx eax, byte ptr [0xfee00023]
    mov esi, g_b23
    call g_line
    movzx eax, word ptr [0xfee00022]
    mov esi, g_w22
    call g_line
    movzx eax, word ptr [0xfee00021]
    mov esi, g_w21
    call g_line
    mov eax, dword ptr [0xfee00021]
    mov esi, g_d21
    call g_line
    mov eax, dword ptr [0xfee00022]
    mov esi, g_d22
    call g_line
    mov eax, dword ptr [0xfee00023]
    mov esi, g_d23
    call g_line
    movzx eax, byte ptr [0xfee00332]
    mov esi, g_b332
    call g_line
    mov eax, dword ptr [0xfee00331]
    mov esi, g_d331
    call g_line
    mov eax, dword ptr [0xfee00332]
    mov esi, g_d332
    call g_line
    mov eax, dword ptr [0xfee00333]
    mov esi, g_d333
    call g_line

    mov dword ptr [0xfee00080], 0x20
    mov byte ptr [0xfee00081], 0x77
    mov eax, dword ptr [0xfee00080]
    mov esi, g_wb81
    call g_line
    mov word ptr [0xfee00080], 0x66
    mov eax, dword ptr [0xfee00080]
    mov esi, g_ww80
    call g_line
    fild qword ptr [0xfee00020]
    fistp qword ptr [g_q]
    mov eax, dword ptr [g_q]
    mov esi, g_q20lo
    call g_line
    mov eax, dword ptr [g_q + 4]
    mov esi, g_q20hi
    call g_line
    fild qword ptr [g_q80]
    fistp qword ptr [0xfee00080]
    mov eax, dword ptr [0xfee00080]
    mov esi, g_q80w
    call g_line
    mov dword ptr [0xfee00280], 0xffffffff
    mov eax, dword ptr [0xfee00280]
    mov esi, g_esrw
    call g_line
    mov eax, dword ptr [0xfee003fe]
    mov esi, g_d3fe
    call g_line
    mov eax, dword ptr [0xfee00400]
    mov esi, g_d400
    call g_line
    mov eax, dword ptr [0xfee00ff0]
    mov esi, g_dff0
    call g_line

    mov esi, g_found
    call puts
    xor edi, edi
    call g_table
    mov edi, 1
    mov ebp, 0xffffffff
    mov esi, g_ones
    call puts
    call g_table
    xor ebp, ebp
    mov esi, g_zeros
    call puts
    call g_table
    mov ebp, 0xa5a5a5a5
    mov esi, g_a5
    call puts
    call g_table

    mov dword ptr [0xfee00020], 0
    mov esi, g_msi
    call puts
    mov dword ptr [0xfee00000], 0
    mov eax, dword ptr [0xfee00200]
    mov esi, g_irr0
    call put_kv_hex
    mov eax, dword ptr [0xfee00180]
    mov esi, g_tmr0
    call put_kv_hex
    mov dword ptr [0xfee00020], 0x34000000
    mov esi, g_alias
    call puts
    mov eax, dword ptr [0xfee01020]
    mov esi, g_alias_v
    call put_kv_hex
    mov al, 0
    ret

# ESI = label, EAX = the value read: prints "label 0x........ esr 0x........".
g_line:
    call puts
    call puthex32
    push esi
    mov esi, g_esr
    call puts
    pop esi
    mov eax, dword ptr [0xfee00280]
    call puthex32
    jmp putnl

# The 64 registers, 8 to a line. EDI = 1: first write EBP to each (but the five named above).
g_table:
    pushad
    mov ebx, 0xfee00000
g_cell:
    test bl, 0x7f
    jnz g_cell_go
    mov esi, g_indent
    call puts
    mov eax, ebx
    mov ecx, 3
    call g_hexn
    mov al, 0x3a                        # ':'
    call putc
g_cell_go:
    test edi, edi
    jz g_cell_read
    mov eax, ebx
    and eax, 0xfff
    cmp eax, 0x000
    je g_cell_read
    cmp eax, 0x0b0
    je g_cell_read
    cmp eax, 0x300
    je g_cell_read
    cmp eax, 0x310
    je g_cell_read
    cmp eax, 0x380
    je g_cell_read
    mov dword ptr [ebx], ebp
g_cell_read:
    mov al, 0x20
    call putc
    mov eax, dword ptr [ebx]
    mov ecx, 8
    call g_hexn
    add ebx, 0x10
    test bl, 0x7f
    jnz g_cell
    call putnl
    cmp ebx, 0xfee00400
    jne g_cell
    popad
    ret

# EAX = value, ECX = digits (1-8): its low ECX hex digits, no prefix.
g_hexn:
    pushad
    mov ebx, eax
    mov edx, ecx
g_hexn_align:
    cmp edx, 8
    je g_hexn_loop
    shl ebx, 4
    inc edx
    jmp g_hexn_align
g_hexn_loop:
    rol ebx, 4
    mov al, bl
    and al, 0x0f
    cmp al, 0x0a
    jb g_hexn_digit
    add al, 0x27
g_hexn_digit:
    add al, 0x30
    call putc
    dec ecx
    jnz g_hexn_loop
    popad
    ret

.balign 8, 0
g_q:    .long 0, 0
g_q80:  .long 0x22, 0x33                # the qword 0x0000003300000022
g_name:   .asciz "mmio_apic_garbage\n"
g_esr0:   .asciz "kernel: esr (0x280) at start "
g_id:     .asciz "kernel: id (0x20) set to 0x12000000, lvt thermal (0x330) to 0x12345678; id reads "
g_b21:    .asciz "kernel: byte read 0x21 "
g_b23:    .asciz "kernel: byte read 0x23 "
g_w22:    .asciz "kernel: word read 0x22 "
g_w21:    .asciz "kernel: word read 0x21 "
g_d21:    .asciz "kernel: dword read 0x21 "
g_d22:    .asciz "kernel: dword read 0x22 "
g_d23:    .asciz "kernel: dword read 0x23 "
g_b332:   .asciz "kernel: byte read 0x332 "
g_d331:   .asciz "kernel: dword read 0x331 "
g_d332:   .asciz "kernel: dword read 0x332 "
g_d333:   .asciz "kernel: dword read 0x333 "
g_wb81:   .asciz "kernel: tpr = 0x20, byte write 0x77 to 0x81; tpr "
g_ww80:   .asciz "kernel: word write 0x66 to 0x80; tpr "
g_q20lo:  .asciz "kernel: fild qword [0x20], low half "
g_q20hi:  .asciz "kernel: fild qword [0x20], high half "
g_q80w:   .asciz "kernel: fistp qword 0x0000003300000022 to [0x80]; tpr "
g_esrw:   .asciz "kernel: esr written 0xffffffff, reads "
g_d3fe:   .asciz "kernel: dword read 0x3fe "
g_d400:   .asciz "kernel: dword read 0x400 "
g_dff0:   .asciz "kernel: dword read 0xff0 "
g_esr:    .asciz " esr "
g_indent: .asciz "  "
g_found:  .asciz "kernel: registers as found\n"
g_ones:   .asciz "kernel: each written 0xffffffff, read back\n"
g_zeros:  .asciz "kernel: each written 0, read back\n"
g_a5:     .asciz "kernel: each written 0xa5a5a5a5, read back\n"
g_msi:    .asciz "kernel: id = 0; write 0 to 0x000\n"
g_irr0:   .asciz "kernel: irr (0x200) "
g_tmr0:   .asciz "kernel: tmr (0x180) "
g_alias:  .asciz "kernel: id = 0x34000000; dword read 0x1020\n"
g_alias_v: .asciz "kernel: 0x1020 reads "

.include "hostile.S"
