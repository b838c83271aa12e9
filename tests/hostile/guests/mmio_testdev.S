# mmio_testdev.S - QEMU's pc-testdev (kvm-unit-tests' device) accessed at every width and offset.
#
# Not on a default QEMU PC: the reference run needs `-device pc-testdev` (tests/hostile/
# test_hostile_devices.py adds it). The device: a 4-byte latch at ports 0xe0-0xe3 (an access of
# width w at port 0xe0 + n reads or writes bytes n..n+w-1 of it; QEMU refuses a misaligned one,
# a word at an odd port or a dword anywhere but 0xe0: the write is dropped, the read gives 0),
# the same latch at 0xe8-0xeb, which the device takes one byte at a time (a dword at 0xe8 is
# four byte accesses; at 0xe9 it is misaligned, refused), a "flush page" port at 0xe4 (dword
# writes only; no visible effect), and 64 KiB of plain storage at 0xff000000 (paging off:
# physical). The kernel writes and reads the latch through each port and width and prints the
# latch after each, then fills the window's start with a pattern and reads it back as bytes,
# words and dwords, aligned and not, writes an unaligned word and dword, moves a qword through
# x87 and four dwords with rep movsd in and out, and writes the window's last byte and word.
# Last, a dword read and a dword write at 0xff00fffe, half inside the window: QEMU splits the
# read into dwords at 0xff00fffc and 0xff010000 (unassigned, reads 0) and the write into bytes
# (two land). hvsim maps nothing at 0xff010000, so it may stop there instead (the test allows
# a clean stop at that line).

main:
    call hv_setup
    mov esi, t_name
    call puts
    fninit
    mov eax, 0x11223344
    out 0xe0, eax
    mov esi, t_outl
    call t_latch
    mov esi, t_inb
    call puts
    mov dx, 0xe0
t_inb_loop:
    in al, dx
    movzx eax, al
    call t_sp_hex
    inc dx
    cmp dx, 0xe4
    jne t_inb_loop
    mov esi, t_inw
    call puts
    mov dx, 0xe0
t_inw_loop:
    in ax, dx
    movzx eax, ax
    call t_sp_hex
    inc dx
    cmp dx, 0xe4
    jne t_inw_loop
    mov esi, t_inl
    call puts
    mov dx, 0xe1
t_inl_loop:
    in eax, dx
    call t_sp_hex
    inc dx
    cmp dx, 0xe4
    jne t_inl_loop
    call putnl
    mov al, 0xaa
    out 0xe1, al
    mov esi, t_outb1
    call t_latch
    mov ax, 0xbbcc
    out 0xe2, ax
    mov esi, t_outw2
    call t_latch
    mov ax, 0xddee
    out 0xe3, ax
    mov esi, t_outw3
    call t_latch
    mov eax, 0x55667788
    out 0xe2, eax
    mov esi, t_outl2
    call t_latch
    mov eax, 0x01020304
    out 0xe8, eax
    mov esi, t_outl8
    call t_latch
    mov eax, 0xa1b2c3d4
    out 0xe9, eax
    mov esi, t_outl9
    call t_latch
    in eax, 0xe9
    mov esi, t_inl9
    call put_kv_hex
    mov al, 0x99
    out 0xea, al
    mov esi, t_outbea
    call t_latch
    in ax, 0xea
    movzx eax, ax
    mov esi, t_inwea
    call put_kv_hex
    mov eax, t_page
    out 0xe4, eax
    mov al, 0xff
    out 0xe4, al
    mov esi, t_flush
    call t_latch

    mov dword ptr [0xff000000], 0x44332211
    mov dword ptr [0xff000004], 0x88776655
    mov esi, t_mb
    call puts
    mov ebx, 0xff000000
t_mb_loop:
    movzx eax, byte ptr [ebx]
    call t_sp_hex
    movzx eax, word ptr [ebx]
    call t_sp_hex
    mov eax, dword ptr [ebx]
    call t_sp_hex
    inc ebx
    cmp ebx, 0xff000004
    jne t_mb_loop
    call putnl
    mov word ptr [0xff000001], 0xbbaa
    mov dword ptr [0xff000005], 0xeeddccff
    mov esi, t_unal
    call t_win
    fild qword ptr [0xff000000]
    fistp qword ptr [0xff000008]
    mov esi, t_x87
    call t_win
    mov esi, t_src
    mov edi, 0xff000004
    mov ecx, 4
    cld
    .byte 0xf3, 0xa5                    # rep movsd (keystone rejects the mnemonic)
    mov esi, 0xff000000
    mov edi, t_dst
    mov ecx, 4
    .byte 0xf3, 0xa5
    mov esi, t_movs
    call t_win
    mov eax, dword ptr [t_dst + 12]
    mov esi, t_dst_is
    call put_kv_hex
    mov byte ptr [0xff00ffff], 0x5e
    movzx eax, byte ptr [0xff00ffff]
    mov esi, t_last_b
    call put_kv_hex
    mov word ptr [0xff00fffe], 0x7c6b
    mov eax, dword ptr [0xff00fffc]
    mov esi, t_last_w
    call put_kv_hex

    mov esi, t_cross
    call puts
    mov eax, dword ptr [0xff00fffe]
    mov esi, t_cross_r
    call put_kv_hex
    mov dword ptr [0xff00fffe], 0x94837261
    mov eax, dword ptr [0xff00fffc]
    mov esi, t_cross_w
    call put_kv_hex
    mov al, 0
    ret

t_latch:                                # ESI = label: prints it and the latch (inl 0xe0)
    call puts
    push eax
    in eax, 0xe0
    call puthex32
    call putnl
    pop eax
    ret
t_win:                                  # ESI = label: prints it and the window's first 4 dwords
    call puts
    push ebx
    push eax
    mov ebx, 0xff000000
t_win_loop:
    mov eax, dword ptr [ebx]
    call t_sp_hex
    add ebx, 4
    cmp ebx, 0xff000010
    jne t_win_loop
    call putnl
    pop eax
    pop ebx
    ret
t_sp_hex:                               # " 0x%08x" of EAX
    push eax
    mov al, 0x20
    call putc
    pop eax
    jmp puthex32

.balign 0x1000, 0
t_page:   .fill 16, 1, 0
t_src:    .long 0x10203040, 0x50607080, 0x90a0b0c0, 0xd0e0f000
t_dst:    .fill 16, 1, 0
t_name:   .asciz "mmio_testdev\n"
t_outl:   .asciz "kernel: outl 0xe0, 0x11223344; latch "
t_inb:    .asciz "kernel: inb 0xe0-0xe3:"
t_inw:    .asciz "\nkernel: inw 0xe0-0xe3:"
t_inl:    .asciz "\nkernel: inl 0xe1-0xe3:"
t_outb1:  .asciz "kernel: outb 0xe1, 0xaa; latch "
t_outw2:  .asciz "kernel: outw 0xe2, 0xbbcc; latch "
t_outw3:  .asciz "kernel: outw 0xe3, 0xddee; latch "
t_outl2:  .asciz "kernel: outl 0xe2, 0x55667788; latch "
t_outl8:  .asciz "kernel: outl 0xe8, 0x01020304; latch "
t_outl9:  .asciz "kernel: outl 0xe9, 0xa1b2c3d4; latch "
t_inl9:   .asciz "kernel: inl 0xe9 "
t_outbea: .asciz "kernel: outb 0xea, 0x99; latch "
t_inwea:  .asciz "kernel: inw 0xea "
t_flush:  .asciz "kernel: outl 0xe4, a page; outb 0xe4, 0xff; latch "
t_mb:     .asciz "kernel: window 0x44332211 0x88776655; byte, word, dword at 0-3:"
t_unal:   .asciz "kernel: word 0xbbaa at 1, dword 0xeeddccff at 5; window:"
t_x87:    .asciz "kernel: fild qword [0], fistp qword [8]; window:"
t_movs:   .asciz "kernel: rep movsd 4 dwords to 4, then 4 from 0; window:"
t_dst_is: .asciz "kernel: 4th dword moved out "
t_last_b: .asciz "kernel: byte 0x5e to 0xffff, read back "
t_last_w: .asciz "kernel: word 0x7c6b to 0xfffe; dword at 0xfffc "
t_cross:  .asciz "kernel: dword accesses at 0xff00fffe, across the window's end\n"
t_cross_r: .asciz "kernel: dword read "
t_cross_w: .asciz "kernel: dword 0x94837261 written; dword at 0xfffc "

.include "hostile.S"
