# acpi.S - the ACPI tables as a kernel finds them, and the PM timer they point to.
#
# Like Linux's acpi_find_root_pointer (and kvm-unit-tests' lib/acpi.c), the kernel scans the
# BIOS area 0xE0000-0xFFFFF on 16-byte boundaries for "RSD PTR " with a valid 20-byte
# checksum, follows the RSDT, and looks up the FADT ("FACP"), the MADT ("APIC") and WAET by
# signature (QEMU's RSDT also lists an HPET, which hvsim does not have: the guest never asks
# for it, nor prints the RSDT's length). For each table found: its address, length and
# whether its checksum is right. Then what a kernel uses from them: the FADT's FACS and DSDT
# addresses and its power-management fields (the PM timer at 0x608), the FACS and DSDT
# signatures, and every MADT entry decoded. Last, the PM timer itself, with yes/no facts only
# (QEMU's runs on wall time): 200 reads fit in 24 bits and do not all agree, and a misaligned
# inw 0x609 reads 0. The addresses printed are QEMU's at -m 64.

main:
    mov esi, a_name
    call puts
    call find_rsdp
    mov esi, a_rsdp
    call put_kv_hex
    test eax, eax
    jz a_fail
    mov ebx, eax
    movzx eax, byte ptr [ebx + 15]
    mov esi, a_rsdp_rev
    call put_kv_dec
    mov esi, a_oem
    call puts
    lea esi, [ebx + 9]
    mov ecx, 6
    call put_chars
    call putnl
    mov ebx, dword ptr [ebx + 16]
    mov esi, a_rsdt
    mov eax, ebx
    call put_kv_hex
    mov esi, a_rsdt_sig
    call puts
    mov esi, ebx
    mov ecx, 4
    call put_chars
    mov eax, ebx
    call put_checksum
    mov dword ptr [a_rsdt_at], ebx

    mov eax, 0x50434146                 # "FACP"
    call show_table
    mov dword ptr [a_fadt_at], eax
    mov eax, 0x43495041                 # "APIC"
    call show_table
    mov dword ptr [a_madt_at], eax
    mov eax, 0x54454157                 # "WAET"
    call show_table
    test eax, eax
    jz a_no_waet
    mov eax, dword ptr [eax + 36]
    mov esi, a_waet_flags
    call put_kv_hex
a_no_waet:
    call show_fadt
    call show_madt
    call show_pm_timer
    mov al, 0
    ret
a_fail:
    mov al, 1
    ret

# find_rsdp: EAX = the first 16-byte-aligned "RSD PTR " in 0xE0000-0xFFFFF whose first 20
# bytes sum to 0, or 0.
find_rsdp:
    push esi
    push ecx
    mov esi, 0xe0000
fr_loop:
    cmp dword ptr [esi], 0x20445352     # "RSD "
    jne fr_next
    cmp dword ptr [esi + 4], 0x20525450 # "PTR "
    jne fr_next
    mov ecx, 20
    call sum_bytes
    test al, al
    jz fr_found
fr_next:
    add esi, 16
    cmp esi, 0x100000
    jb fr_loop
    xor esi, esi
fr_found:
    mov eax, esi
    pop ecx
    pop esi
    ret

# put_checksum: prints whether the ACPI table at EAX sums to 0 over its header's length.
put_checksum:
    push esi
    push ecx
    mov esi, eax
    mov ecx, dword ptr [esi + 4]
    call sum_bytes
    mov esi, a_sum_ok
    test al, al
    jz pc_print
    mov esi, a_sum_bad
pc_print:
    call puts
    pop ecx
    pop esi
    ret

# find_table: EAX = signature -> EAX = the address the RSDT lists for it, or 0.
find_table:
    push ebx
    push ecx
    push edx
    mov ebx, dword ptr [a_rsdt_at]
    mov ecx, dword ptr [ebx + 4]
    sub ecx, 36
    shr ecx, 2
    lea edx, [ebx + 36]
ft_loop:
    test ecx, ecx
    jz ft_none
    mov ebx, dword ptr [edx]
    cmp dword ptr [ebx], eax
    je ft_found
    add edx, 4
    dec ecx
    jmp ft_loop
ft_none:
    xor ebx, ebx
ft_found:
    mov eax, ebx
    pop edx
    pop ecx
    pop ebx
    ret

# show_table: EAX = signature, prints "SIG at ADDR length N checksum ok", EAX = address or 0.
show_table:
    push ebx
    push esi
    mov dword ptr [a_sig], eax
    call find_table
    mov ebx, eax
    mov esi, a_sig
    call puts
    test ebx, ebx
    jnz st_found
    mov esi, a_missing
    call puts
    jmp st_out
st_found:
    mov esi, a_at
    call puts
    mov eax, ebx
    call puthex32
    mov esi, a_length
    call puts
    mov eax, dword ptr [ebx + 4]
    call putdec
    movzx eax, byte ptr [ebx + 8]
    mov esi, a_revision
    call puts
    call putdec
    mov eax, ebx
    call put_checksum
st_out:
    mov eax, ebx
    pop esi
    pop ebx
    ret

show_fadt:
    mov ebx, dword ptr [a_fadt_at]
    test ebx, ebx
    jz sf_out
    mov eax, dword ptr [ebx + 36]
    mov esi, a_facs
    call put_kv_hex
    mov esi, a_facs_sig
    call puts
    mov esi, eax
    mov ecx, 4
    call put_chars
    mov esi, a_length
    call puts
    mov eax, dword ptr [eax + 4]
    call putdec
    call putnl
    mov eax, dword ptr [ebx + 40]
    mov esi, a_dsdt
    call put_kv_hex
    mov esi, a_dsdt_sig
    call puts
    mov esi, eax
    mov ecx, 4
    call put_chars
    call putnl
    movzx eax, byte ptr [ebx + 44]
    mov esi, a_int_model
    call put_kv_dec
    movzx eax, word ptr [ebx + 46]
    mov esi, a_sci
    call put_kv_dec
    mov eax, dword ptr [ebx + 48]
    mov esi, a_smi
    call put_kv_hex
    movzx eax, word ptr [ebx + 52]
    mov esi, a_enable
    call put_kv_hex
    mov eax, dword ptr [ebx + 56]
    mov esi, a_pm1a_evt
    call put_kv_hex
    mov eax, dword ptr [ebx + 64]
    mov esi, a_pm1a_cnt
    call put_kv_hex
    mov eax, dword ptr [ebx + 76]
    mov esi, a_pm_tmr
    call put_kv_hex
    mov eax, dword ptr [ebx + 80]
    mov esi, a_gpe0
    call put_kv_hex
    mov eax, dword ptr [ebx + 88]
    mov esi, a_lens1
    call put_kv_hex
    mov eax, dword ptr [ebx + 92]
    mov esi, a_lens2
    call put_kv_hex
    movzx eax, byte ptr [ebx + 108]
    mov esi, a_century
    call put_kv_hex
    mov eax, dword ptr [ebx + 112]
    mov esi, a_flags
    call put_kv_hex
sf_out:
    ret

show_madt:
    mov ebx, dword ptr [a_madt_at]
    test ebx, ebx
    jz sm_out
    mov eax, dword ptr [ebx + 36]
    mov esi, a_lapic
    call put_kv_hex
    mov eax, dword ptr [ebx + 40]
    mov esi, a_madt_flags
    call put_kv_hex
    mov edx, ebx
    add edx, dword ptr [ebx + 4]        # end of the table
    lea edi, [ebx + 44]
sm_loop:
    cmp edi, edx
    jae sm_out
    movzx eax, byte ptr [edi]
    cmp al, 0
    je sm_cpu
    cmp al, 1
    je sm_ioapic
    cmp al, 2
    je sm_override
    cmp al, 4
    je sm_nmi
    mov esi, a_e_other
    call put_kv_dec
    jmp sm_next
sm_cpu:
    mov esi, a_e_cpu
    call puts
    movzx eax, byte ptr [edi + 2]
    call putdec
    mov esi, a_e_apic_id
    call puts
    movzx eax, byte ptr [edi + 3]
    call putdec
    mov esi, a_e_flags
    mov eax, dword ptr [edi + 4]
    call put_kv_hex
    jmp sm_next
sm_ioapic:
    mov esi, a_e_ioapic
    call puts
    movzx eax, byte ptr [edi + 2]
    call putdec
    mov esi, a_e_address
    call puts
    mov eax, dword ptr [edi + 4]
    call puthex32
    mov esi, a_e_gsi_base
    mov eax, dword ptr [edi + 8]
    call put_kv_dec
    jmp sm_next
sm_override:
    mov esi, a_e_override
    call puts
    movzx eax, byte ptr [edi + 2]
    call putdec
    mov esi, a_e_irq
    call puts
    movzx eax, byte ptr [edi + 3]
    call putdec
    mov esi, a_e_gsi
    call puts
    mov eax, dword ptr [edi + 4]
    call putdec
    mov esi, a_e_flags
    movzx eax, word ptr [edi + 8]
    call put_kv_hex
    jmp sm_next
sm_nmi:
    mov esi, a_e_nmi
    call puts
    movzx eax, byte ptr [edi + 2]
    call puthex32
    mov esi, a_e_flags_sp
    call puts
    movzx eax, word ptr [edi + 3]
    call puthex32
    mov esi, a_e_lint
    movzx eax, byte ptr [edi + 5]
    call put_kv_dec
sm_next:
    movzx eax, byte ptr [edi + 1]
    test eax, eax
    jz sm_out                           # a zero length would loop for ever
    add edi, eax
    jmp sm_loop
sm_out:
    ret

# The PM timer at the FADT's PM_TMR_BLK: 200 reads, each below 2^24, not all equal.
show_pm_timer:
    mov ebx, dword ptr [a_fadt_at]
    test ebx, ebx
    jz sp_out
    mov edx, dword ptr [ebx + 76]
    in eax, dx
    mov ebx, eax                        # the first value
    xor esi, esi                        # changed?
    xor edi, edi                        # high bits ever set?
    mov ecx, 200
sp_loop:
    in eax, dx
    cmp eax, ebx
    je sp_same
    mov esi, 1
sp_same:
    or edi, eax
    dec ecx
    jnz sp_loop
    mov eax, esi
    mov esi, a_tmr_changes
    call put_yes_no
    shr edi, 24
    cmp edi, 0
    sete al
    movzx eax, al
    mov esi, a_tmr_24
    call put_yes_no
    inc edx                             # PM_TMR_BLK + 1
    in ax, dx
    movzx eax, ax
    mov esi, a_tmr_misaligned
    call put_kv_hex
sp_out:
    ret

a_name:          .asciz "acpi\n"
a_rsdp:          .asciz "RSDP at: "
a_rsdp_rev:      .asciz "RSDP revision: "
a_oem:           .asciz "RSDP OEM: "
a_rsdt:          .asciz "RSDT at: "
a_rsdt_sig:      .asciz "RSDT signature: "
a_sum_ok:        .asciz " checksum ok\n"
a_sum_bad:       .asciz " checksum BAD\n"
a_at:            .asciz " at "
a_length:        .asciz " length "
a_revision:      .asciz " revision "
a_missing:       .asciz " not in the RSDT\n"
a_waet_flags:    .asciz "WAET flags: "
a_facs:          .asciz "FADT firmware_ctrl (FACS): "
a_facs_sig:      .asciz "FACS signature: "
a_dsdt:          .asciz "FADT dsdt: "
a_dsdt_sig:      .asciz "DSDT signature: "
a_int_model:     .asciz "FADT int_model: "
a_sci:           .asciz "FADT sci_int: "
a_smi:           .asciz "FADT smi_cmd: "
a_enable:        .asciz "FADT acpi_enable/disable: "
a_pm1a_evt:      .asciz "FADT pm1a_evt_blk: "
a_pm1a_cnt:      .asciz "FADT pm1a_cnt_blk: "
a_pm_tmr:        .asciz "FADT pm_tmr_blk: "
a_gpe0:          .asciz "FADT gpe0_blk: "
a_lens1:         .asciz "FADT pm1_evt/pm1_cnt/pm2_cnt/pm_tmr lengths: "
a_lens2:         .asciz "FADT gpe0/gpe1 lengths, gpe1 base, cst_cnt: "
a_century:       .asciz "FADT century: "
a_flags:         .asciz "FADT flags: "
a_lapic:         .asciz "MADT local APIC address: "
a_madt_flags:    .asciz "MADT flags: "
a_e_other:       .asciz "MADT entry of type "
a_e_cpu:         .asciz "MADT processor "
a_e_apic_id:     .asciz " APIC ID "
a_e_flags:       .asciz " flags "
a_e_flags_sp:    .asciz " flags "
a_e_ioapic:      .asciz "MADT I/O APIC "
a_e_address:     .asciz " address "
a_e_gsi_base:    .asciz " GSI base "
a_e_override:    .asciz "MADT override bus "
a_e_irq:         .asciz " IRQ "
a_e_gsi:         .asciz " -> GSI "
a_e_nmi:         .asciz "MADT local APIC NMI processor "
a_e_lint:        .asciz " LINT"
a_tmr_changes:   .asciz "PM timer advances: "
a_tmr_24:        .asciz "PM timer fits in 24 bits: "
a_tmr_misaligned: .asciz "PM timer inw at PM_TMR_BLK+1: "
.balign 4, 0
a_sig:           .long 0, 0             # the signature being shown, NUL-terminated
a_rsdt_at:       .long 0
a_fadt_at:       .long 0
a_madt_at:       .long 0

.include "include/tables.S"
.include "runtime.S"
