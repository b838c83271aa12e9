# include/tables.S - the routines the firmware-table guests (acpi.S, mptable.S) share: a checksum,
# printing a signature, a yes/no fact. Included before runtime.S; each preserves every register
# but EFLAGS (and EAX where it returns a value).

# sum_bytes: AL = the sum of ECX bytes at ESI (mod 256).
sum_bytes:
    push esi
    push ecx
    push edx
    xor edx, edx
sb_loop:
    add dl, byte ptr [esi]
    inc esi
    dec ecx
    jnz sb_loop
    mov eax, edx
    pop edx
    pop ecx
    pop esi
    ret

# put_chars: prints ECX bytes at ESI.
put_chars:
    push esi
    push ecx
    push eax
pch_loop:
    mov al, byte ptr [esi]
    call putc
    inc esi
    dec ecx
    jnz pch_loop
    pop eax
    pop ecx
    pop esi
    ret

# put_yes_no: ESI = label, EAX = 0 or not.
put_yes_no:
    push esi
    call puts
    mov esi, t_yes
    test eax, eax
    jnz pyn_print
    mov esi, t_no
pyn_print:
    call puts
    pop esi
    ret

t_yes: .asciz "yes\n"
t_no:  .asciz "no\n"
