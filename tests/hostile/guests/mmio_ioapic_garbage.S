# mmio_ioapic_garbage.S - garbage, out-of-range indexes and odd accesses to the I/O APIC.
#
# The I/O APIC at 0xfec00000 (paging off: physical) is two dword windows: IOREGSEL (0x00), an
# index, and IOWIN (0x10), the register it names: 0 ID, 1 version, 2 arbitration, 0x10-0x3f the
# 24 redirection entries as low/high halves. QEMU also has an EOI register at 0x40. The kernel:
#   * reads IOWIN for indexes that name nothing (0x03-0x0f, 0x40, 0x41, 0x7f, 0x80, 0xfe, 0xff)
#     and for every entry; writes 0xffffffff and 0x12345678 to IOREGSEL (it keeps one byte);
#   * writes 0xffffffff to ID, version and arbitration and reads them back;
#   * writes every entry (both halves) with 0xffffffff, then with 0x0001000f (vector 0x0f,
#     below 0x10), reading all back; writes the EOI register with 0xffffffff and with 0xff;
#   * accesses IOREGSEL and IOWIN as bytes and words, reads a dword at 0x0e (across IOWIN),
#     reads IOWIN and writes and reads IOREGSEL as qwords through x87 (QEMU splits them into
#     dwords: the one at 0x14 or 0x04 decodes as nothing),
#     writes 0xffffffff to and reads the reserved offsets 0x04, 0x14, 0x20, 0x30, 0x44 and
#     0xffc, and reads 0x100 and 0x110 (QEMU decodes offset bits 0-7 only: IOREGSEL and IOWIN);
#   * leaves every entry masked (0x00010000, destination 0) and prints them.
# Every entry stays masked throughout and IF stays 0, so no interrupt can come of it.

main:
    call hv_setup
    mov esi, i_name
    call puts
    mov esi, i_none
    call puts
    mov esi, i_sels
i_sweep:
    movzx eax, byte ptr [esi]
    cmp al, 0xee                        # end of the list
    je i_sweep_done
    mov dword ptr [0xfec00000], eax
    mov al, 0x20
    call putc
    mov eax, dword ptr [0xfec00010]
    call puthex32
    inc esi
    jmp i_sweep
i_sweep_done:
    call putnl
    mov esi, i_found
    call puts
    xor edi, edi
    call i_table
    mov dword ptr [0xfec00000], 0xffffffff
    mov eax, dword ptr [0xfec00000]
    mov esi, i_sel_ones
    call put_kv_hex
    mov dword ptr [0xfec00000], 0x12345678
    mov eax, dword ptr [0xfec00000]
    mov esi, i_sel_1234
    call put_kv_hex

    mov ebx, 0
i_fixed:
    mov dword ptr [0xfec00000], ebx
    mov dword ptr [0xfec00010], 0xffffffff
    mov esi, i_reg
    call puts
    mov eax, ebx
    call puthex32
    mov esi, i_reads
    call puts
    mov eax, dword ptr [0xfec00010]
    call puthex32
    call putnl
    inc ebx
    cmp ebx, 3
    jb i_fixed

    mov esi, i_ones
    call puts
    mov edi, 1
    mov ebp, 0xffffffff
    mov edx, 0xffffffff
    call i_table
    mov esi, i_low
    call puts
    mov ebp, 0x0001000f
    mov edx, 0x0001000f
    call i_table
    mov dword ptr [0xfec00040], 0xffffffff
    mov dword ptr [0xfec00040], 0xff
    mov eax, dword ptr [0xfec00040]
    mov esi, i_eoi
    call put_kv_hex

    mov byte ptr [0xfec00000], 0x12
    movzx eax, byte ptr [0xfec00000]
    mov esi, i_bsel
    call put_kv_hex
    mov word ptr [0xfec00000], 0x3411
    mov eax, dword ptr [0xfec00000]
    mov esi, i_wsel
    call put_kv_hex
    mov byte ptr [0xfec00001], 0x13
    mov eax, dword ptr [0xfec00000]
    mov esi, i_bsel1
    call put_kv_hex
    movzx eax, byte ptr [0xfec00010]
    mov esi, i_bwin
    call put_kv_hex
    movzx eax, word ptr [0xfec00010]
    mov esi, i_wwin
    call put_kv_hex
    mov byte ptr [0xfec00010], 0x00
    mov word ptr [0xfec00010], 0x0000
    mov eax, dword ptr [0xfec00010]
    mov esi, i_nwin
    call put_kv_hex
    mov eax, dword ptr [0xfec0000e]
    mov esi, i_d0e
    call put_kv_hex
    fninit
    fild qword ptr [0xfec00010]
    fistp qword ptr [i_q]
    mov esi, i_q10
    call i_qline
    fild qword ptr [i_q13]
    fistp qword ptr [0xfec00000]
    fild qword ptr [0xfec00000]
    fistp qword ptr [i_q]
    mov esi, i_q00
    call i_qline
    mov esi, i_resv
    call puts
    mov esi, i_resv_offs
i_resv_loop:
    mov ebx, dword ptr [esi]
    test ebx, ebx
    jz i_resv_done
    mov dword ptr [ebx], 0xffffffff
    mov al, 0x20
    call putc
    mov eax, dword ptr [ebx]
    call puthex32
    add esi, 4
    jmp i_resv_loop
i_resv_done:
    call putnl
    mov eax, dword ptr [0xfec00000]
    mov esi, i_after_sel
    call put_kv_hex
    mov eax, dword ptr [0xfec00010]
    mov esi, i_after_win
    call put_kv_hex
    mov dword ptr [0xfec00000], 0x01
    mov eax, dword ptr [0xfec00100]
    mov esi, i_a100
    call put_kv_hex
    mov eax, dword ptr [0xfec00110]
    mov esi, i_a110
    call put_kv_hex

    mov esi, i_final
    call puts
    mov ebp, 0x00010000
    xor edx, edx
    call i_table
    mov al, 0
    ret

i_qline:                                # ESI = label: prints it and the qword at i_q
    call puts
    mov eax, dword ptr [i_q + 4]
    call puthex32
    mov al, 0x20
    call putc
    mov eax, dword ptr [i_q]
    call puthex32
    jmp putnl

# Indexes 0x10-0x3f, 8 to a line. EDI = 1: first write EBP (low halves) or EDX (high halves).
i_table:
    pushad
    mov ebx, 0x10
i_cell:
    test bl, 0x07
    jnz i_cell_go
    mov esi, i_indent
    call puts
    mov eax, ebx
    call puthex32
    mov al, 0x3a                        # ':'
    call putc
i_cell_go:
    mov dword ptr [0xfec00000], ebx
    test edi, edi
    jz i_cell_read
    mov eax, ebp
    test bl, 1
    jz i_cell_write
    mov eax, edx
i_cell_write:
    mov dword ptr [0xfec00010], eax
i_cell_read:
    mov al, 0x20
    call putc
    mov eax, dword ptr [0xfec00010]
    call puthex32
    inc ebx
    test bl, 0x07
    jnz i_cell
    call putnl
    cmp ebx, 0x40
    jne i_cell
    popad
    ret

.balign 8, 0
i_q:         .long 0, 0
i_q13:       .long 0x13, 0x77                # the qword 0x0000007700000013
i_resv_offs: .long 0xfec00004, 0xfec00014, 0xfec00020, 0xfec00030, 0xfec00044, 0xfec00ffc, 0
i_sels:      .byte 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f
             .byte 0x40, 0x41, 0x7f, 0x80, 0xfe, 0xff, 0xee
i_name:      .asciz "mmio_ioapic_garbage\n"
i_none:      .asciz "kernel: iowin for indexes 0x03-0x0f, 0x40, 0x41, 0x7f, 0x80, 0xfe, 0xff:\n"
i_found:     .asciz "kernel: entries as found\n"
i_sel_ones:  .asciz "kernel: ioregsel written 0xffffffff, reads "
i_sel_1234:  .asciz "kernel: ioregsel written 0x12345678, reads "
i_reg:       .asciz "kernel: register "
i_reads:     .asciz " written 0xffffffff, reads "
i_ones:      .asciz "kernel: entries written 0xffffffff\n"
i_low:       .asciz "kernel: entries written 0x0001000f\n"
i_eoi:       .asciz "kernel: eoi (0x40) written 0xffffffff, 0xff; reads "
i_bsel:      .asciz "kernel: byte write 0x12 to ioregsel; byte read "
i_wsel:      .asciz "kernel: word write 0x3411 to ioregsel; dword read "
i_bsel1:     .asciz "kernel: byte write 0x13 to 0x01; ioregsel "
i_bwin:      .asciz "kernel: byte read iowin "
i_wwin:      .asciz "kernel: word read iowin "
i_nwin:      .asciz "kernel: byte and word writes of 0 to iowin; iowin "
i_d0e:       .asciz "kernel: dword read 0x0e "
i_q10:       .asciz "kernel: fild qword [0x10] (high, low): "
i_q00:       .asciz "kernel: fistp qword 0x0000007700000013 to [0x00]; fild qword [0x00]: "
i_resv:      .asciz "kernel: 0xffffffff written to 0x04 0x14 0x20 0x30 0x44 0xffc, each read back:\n"
i_after_sel: .asciz "kernel: then ioregsel "
i_after_win: .asciz "kernel: and iowin "
i_a100:      .asciz "kernel: ioregsel = 1; read 0x100 "
i_a110:      .asciz "kernel: read 0x110 "
i_final:     .asciz "kernel: every entry masked, destination 0\n"
i_indent:    .asciz "  "

.include "hostile.S"
