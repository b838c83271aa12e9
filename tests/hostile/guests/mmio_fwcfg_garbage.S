# mmio_fwcfg_garbage.S - fw_cfg (ports 0x510-0x51b) driven the ways a firmware never drives it.
#
# guests/fwcfg.S reads the items a kernel wants; this guest does the rest, printing what comes
# back. Keys: 0x0050 (past the file slots), 0x7fff and 0xffff (0xffff is also QEMU's "nothing
# selected"), 0x4000 (the write-channel bit on key 0: the signature), 0x8000 and 0xc000 (arch key
# 0, empty), 8 bytes each. The signature read 20 bytes past its end, twice. The file directory:
# whether its count is nonzero, whether the first record's key is a file key (0x20-0x3f), and
# the first unused record, which must be zeros (QEMU lists more files than hvsim keeps, so the
# count and names are not printed). Port misuse, each followed by one data read to show what
# it did to the selection: outb and outl to 0x511, outb and outl to 0x510 (only a 16-bit write
# selects), inl of 0x510 and 0x511. The DMA window: its 8 signature bytes one by one, inw 0x516,
# an outb and an outw to it (ignored). Then DMA descriptors (QEMU's fw_cfg_dma_transfer: read
# the 16-byte descriptor, act, store the control word back; every transfer here is 4 or 16
# bytes): one at physical address 0 (nothing special about 0); one whose target is itself (from
# its length field on: QEMU reads the descriptor before acting, then stores control 0); one
# at 0x1_0000xxxx (the high port's half honoured: beyond 4 GiB QEMU's read fails and nothing in
# RAM changes); one at 0xfffffff0 (QEMU reads its BIOS ROM's reset vector, which asks for no
# transfer, and its store back is dropped); a read into 0xffc00000 (unassigned on QEMU: the
# error bit; the area trap keeps its monitor in); a read of an unknown key (zero-filled).

main:
    call hv_setup
    mov esi, w_name
    call puts
    mov esi, w_keys
w_key_loop:
    movzx eax, word ptr [esi]
    cmp eax, 0x1234                     # end of the list
    je w_sig
    call w_select
    push esi
    mov esi, w_key
    call puts
    call puthex32
    mov al, 0x3a                        # ':'
    call putc
    mov ecx, 2
    call w_dump
    pop esi
    add esi, 2
    jmp w_key_loop
w_sig:
    xor eax, eax
    call w_select
    mov esi, w_sig20
    call puts
    mov ecx, 5
    call w_dump
    mov esi, w_sig40
    call puts
    mov ecx, 5
    call w_dump

    mov eax, 0x19
    call w_select
    call w_dword
    bswap eax
    mov ebx, eax                        # the count
    test ebx, ebx
    setnz al
    movzx eax, al
    mov esi, w_count
    call put_kv_hex
    lea ecx, [ebx + 1]
w_dir_next:                             # read records until the first unused one
    mov edi, w_rec
    mov edx, 0x40
w_dir_byte:
    call w_byte
    mov byte ptr [edi], al
    inc edi
    dec edx
    jnz w_dir_byte
    lea eax, [ebx + 1]
    cmp ecx, eax
    jne w_dir_skip
    movzx eax, word ptr [w_rec + 4]
    xchg al, ah
    sub eax, 0x20
    cmp eax, 0x20
    setb al
    movzx eax, al
    mov esi, w_first
    call put_kv_hex
w_dir_skip:
    dec ecx
    jnz w_dir_next
    mov esi, w_rec
    xor eax, eax
    mov ecx, 0x10
w_dir_or:
    or eax, dword ptr [esi]
    add esi, 4
    dec ecx
    jnz w_dir_or
    mov esi, w_unused
    call put_kv_hex

    xor eax, eax
    call w_select
    mov dx, 0x511
    mov al, 0x19
    out dx, al
    mov esi, w_outb511
    call w_next
    mov eax, 0x00190019
    out dx, eax
    mov esi, w_outl511
    call w_next
    mov dx, 0x510
    mov al, 0x19
    out dx, al
    mov esi, w_outb510
    call w_next
    mov eax, 0x00190019
    out dx, eax
    mov esi, w_outl510
    call w_next
    xor eax, eax
    call w_select
    in eax, dx
    mov esi, w_inl510
    call put_kv_hex
    mov esi, w_then
    call w_next
    mov dx, 0x511
    in eax, dx
    mov esi, w_inl511
    call put_kv_hex
    mov esi, w_then
    call w_next

    mov esi, w_dma_bytes
    call puts
    mov dx, 0x514
w_dma_byte:
    in al, dx
    call putc
    inc dx
    cmp dx, 0x51c
    jne w_dma_byte
    call putnl
    mov dx, 0x516
    in ax, dx
    movzx eax, ax
    mov esi, w_inw516
    call put_kv_hex
    mov dx, 0x518
    mov al, 0xff
    out dx, al
    mov dx, 0x514
    mov ax, 0xffff
    out dx, ax
    in eax, dx
    mov esi, w_dma_after
    call put_kv_hex

    mov dword ptr [0], 0x0a000000       # control: select key 0, read (big-endian)
    mov dword ptr [4], 0x04000000       # length 4
    mov dword ptr [8], 0
    mov eax, w_buf
    bswap eax
    mov dword ptr [12], eax
    mov dword ptr [w_buf], 0xffffffff
    xor eax, eax
    call w_dma
    mov eax, dword ptr [0]
    mov esi, w_at0
    call w_show

    mov dword ptr [w_desc], 0x0a000000
    mov dword ptr [w_desc + 4], 0x10000000
    mov dword ptr [w_desc + 8], 0
    mov eax, w_desc + 4
    bswap eax
    mov dword ptr [w_desc + 12], eax
    mov eax, w_desc
    call w_dma
    mov esi, w_self
    call puts
    mov esi, w_desc
    mov ecx, 4
w_self_loop:
    mov al, 0x20
    call putc
    mov eax, dword ptr [esi]
    call puthex32
    add esi, 4
    dec ecx
    jnz w_self_loop
    call putnl

    mov dword ptr [w_desc], 0x0a000000  # in RAM at the low half's address: must stay as is
    mov dword ptr [w_desc + 4], 0x04000000
    mov dword ptr [w_desc + 8], 0
    mov dword ptr [w_buf], 0xffffffff
    mov eax, w_buf
    bswap eax
    mov dword ptr [w_desc + 12], eax
    mov dx, 0x514
    mov eax, 0x01000000                 # high half 1, big-endian
    out dx, eax
    mov dx, 0x518
    mov eax, w_desc
    bswap eax
    out dx, eax
    mov eax, dword ptr [w_desc]
    mov esi, w_high
    call w_show

    xor eax, eax
    call w_select
    mov eax, 0xfffffff0
    call w_dma
    mov esi, w_rom
    call w_next

    mov dword ptr [w_desc], 0x0a000000
    mov dword ptr [w_desc + 4], 0x04000000
    mov dword ptr [w_desc + 8], 0
    mov dword ptr [w_desc + 12], 0x0000c0ff   # 0xffc00000, big-endian
    mov eax, w_desc
    call w_dma
    mov eax, dword ptr [w_desc]
    mov esi, w_monitor
    call w_show
    mov dword ptr [w_desc], 0x0a00ff7f  # select key 0x7fff, read
    mov eax, w_buf
    bswap eax
    mov dword ptr [w_desc + 12], eax
    mov dword ptr [w_buf], 0xffffffff
    mov eax, w_desc
    call w_dma
    mov eax, dword ptr [w_desc]
    mov esi, w_unknown
    call w_show
    mov al, 0
    ret

w_select:                               # EAX = key
    push edx
    mov dx, 0x510
    out dx, ax
    pop edx
    ret
w_byte:                                 # AL = the next data byte
    push edx
    mov dx, 0x511
    in al, dx
    pop edx
    ret
w_dword:                                # EAX = the next 4 data bytes, little-endian
    push ecx
    mov ecx, 4
w_dword_loop:
    call w_byte
    ror eax, 8
    dec ecx
    jnz w_dword_loop
    pop ecx
    ret
w_dump:                                 # ECX dwords of data, printed
    call w_dword
    push eax
    mov al, 0x20
    call putc
    pop eax
    call puthex32
    dec ecx
    jnz w_dump
    jmp putnl
w_next:                                 # ESI = label; prints the next data byte
    push eax
    call w_byte
    movzx eax, al
    call put_kv_hex
    pop eax
    ret
w_dma:                                  # EAX = the descriptor's address (below 4 GiB)
    pushad
    bswap eax
    mov ebx, eax
    mov dx, 0x514
    xor eax, eax
    out dx, eax
    mov dx, 0x518
    mov eax, ebx
    out dx, eax
    popad
    ret
w_show:                                 # ESI = label, EAX = control as stored: control, w_buf
    call puts
    bswap eax
    call puthex32
    mov esi, w_buf_is
    call puts
    mov eax, dword ptr [w_buf]
    call puthex32
    jmp putnl

.balign 16, 0
w_desc:   .fill 16, 1, 0
w_buf:    .long 0
w_rec:    .fill 64, 1, 0
w_keys:   .word 0x0050, 0x7fff, 0xffff, 0x4000, 0x8000, 0xc000, 0x1234
w_name:      .asciz "mmio_fwcfg_garbage\n"
w_key:       .asciz "kernel: key "
w_sig20:     .asciz "kernel: key 0, 20 bytes:"
w_sig40:     .asciz "kernel: 20 more:"
w_count:     .asciz "kernel: file directory count nonzero "
w_first:     .asciz "kernel: first record's key is a file key "
w_unused:    .asciz "kernel: first unused record, its bits or-ed "
w_outb511:   .asciz "kernel: key 0; outb 0x511, 0x19; next byte "
w_outl511:   .asciz "kernel: outl 0x511, 0x00190019; next byte "
w_outb510:   .asciz "kernel: outb 0x510, 0x19; next byte "
w_outl510:   .asciz "kernel: outl 0x510, 0x00190019; next byte "
w_inl510:    .asciz "kernel: key 0; inl 0x510 "
w_inl511:    .asciz "kernel: inl 0x511 "
w_then:      .asciz "kernel: then next byte "
w_dma_bytes: .asciz "kernel: inb 0x514-0x51b: "
w_inw516:    .asciz "kernel: inw 0x516 "
w_dma_after: .asciz "kernel: outb 0x518, outw 0x514; inl 0x514 "
w_at0:       .asciz "kernel: dma descriptor at 0 (select 0, read 4): control "
w_buf_is:    .asciz " buffer "
w_self:      .asciz "kernel: dma descriptor reading 16 bytes of key 0 into itself from +4:"
w_high:      .asciz "kernel: dma descriptor at 0x1_0000xxxx: the one at 0xxxxx has control "
w_rom:       .asciz "kernel: key 0; dma descriptor at 0xfffffff0; next byte "
w_monitor:   .asciz "kernel: dma read of key 0 into 0xffc00000: control "
w_unknown:   .asciz "kernel: dma read of key 0x7fff: control "

.include "hostile.S"
