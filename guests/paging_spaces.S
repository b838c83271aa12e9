# paging_spaces.S - twelve address spaces, more than a shadow cache keeps, sharing a page table.
#
# Twelve page directories (0x210000 + k * 0x1000, k = 0..11) each map 0-4 MiB through one
# shared identity page table (0x201000), 4-8 MiB through a page table of their own
# (0x230000 + k * 0x1000) whose first entry maps 0x400000 to frame 0x300000 + k * 0x1000 (holding
# the number 0x100 + k), and point PDE 1023 at themselves, so every page table is also a page in
# 0xffc00000-0xffffffff. Three rounds go through the spaces in turn; in space k the kernel
#   - reads 0x400000 (its own frame's number),
#   - maps 0x401000 to frame 0x300000 + ((k + round) mod 12) * 0x1000 by writing its PTE through
#     the recursive window, runs invlpg, and reads it,
#   - maps 0x3ff000, in the *shared* table, to frame 0x300000 + ((k + 1) mod 12) * 0x1000, with
#     no invlpg: the next space, after its CR3 load, must read that frame there too.
# Each read is added into a checksum per round, and every value read is checked against the one
# expected; the rounds' checksums and the number of mismatches are printed.
# A shadow-paging monitor meets here more address spaces than it caches (a CR3 load to a space it
# evicted), a table shared by all of them and written through a recursive mapping in one space
# while another's shadow was built from it, and page-table pages that are also data pages.

PD0 = 0x210000
PT_SHARED = 0x201000
PT_OWN0 = 0x230000
FRAME0 = 0x300000
SPACES = 12

main:
    mov esi, s_name
    call puts
    xor ebx, ebx                        # k
s_frames:
    mov eax, ebx
    shl eax, 12
    lea edi, [eax + FRAME0]
    lea edx, [ebx + 0x100]
    mov dword ptr [edi], edx            # frame k holds 0x100 + k
    inc ebx
    cmp ebx, SPACES
    jb s_frames
    mov edi, PT_SHARED                  # the shared identity table, 0-4 MiB
    mov eax, 0x3
    mov ecx, 0x400
s_identity:
    stosd
    add eax, 0x1000
    dec ecx
    jnz s_identity
    xor ebx, ebx
s_spaces:                               # directory k and its own table
    mov eax, ebx
    shl eax, 12
    lea edi, [eax + PD0]
    push edi
    mov ecx, 0x400
    push eax
    xor eax, eax
    rep stosd
    pop eax
    pop edi
    mov dword ptr [edi], PT_SHARED | 3
    lea edx, [eax + PT_OWN0 + 3]
    mov dword ptr [edi + 4], edx
    lea edx, [edi + 3]
    mov dword ptr [edi + 0xffc], edx    # PDE 1023: the directory itself
    lea edi, [eax + PT_OWN0]
    push edi
    push eax
    mov ecx, 0x400
    xor eax, eax
    rep stosd
    pop eax
    pop edi
    lea edx, [eax + FRAME0 + 3]
    mov dword ptr [edi], edx            # 0x400000 -> frame k
    inc ebx
    cmp ebx, SPACES
    jb s_spaces

    mov eax, PD0
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax

    xor ebp, ebp                        # mismatches
    xor esi, esi                        # round
s_round:
    xor edi, edi                        # the round's checksum
    xor ebx, ebx                        # k
s_space:
    mov eax, ebx
    shl eax, 12
    add eax, PD0
    mov cr3, eax
    mov eax, dword ptr [0x3ff000]       # the shared table's page: frame (k) after the first space
    add edi, eax
    test ebx, ebx
    jnz s_shared_known
    test esi, esi
    jz s_own                            # the very first read: 0x3ff000 is still identity (0)
s_shared_known:
    lea edx, [ebx + 0x100]
    cmp eax, edx
    je s_own
    inc ebp
s_own:
    mov eax, dword ptr [0x400000]       # frame k
    add edi, eax
    lea edx, [ebx + 0x100]
    cmp eax, edx
    je s_own_ok
    inc ebp
s_own_ok:
    lea eax, [ebx + esi]                # map 0x401000 -> frame (k + round) mod 12
    xor edx, edx
    mov ecx, SPACES
    div ecx
    mov eax, edx
    push eax
    shl eax, 12
    add eax, FRAME0 + 3
    mov dword ptr [0xffc01004], eax     # the PTE of 0x401000, through the recursive window
    invlpg [0x401000]
    mov eax, dword ptr [0x401000]
    add edi, eax
    pop edx
    add edx, 0x100
    cmp eax, edx
    je s_remap_ok
    inc ebp
s_remap_ok:
    lea eax, [ebx + 1]                  # 0x3ff000 -> frame (k + 1) mod 12, in the shared table
    xor edx, edx
    mov ecx, SPACES
    div ecx
    mov eax, edx
    shl eax, 12
    add eax, FRAME0 + 3
    mov dword ptr [0xffc00ffc], eax     # PTE 1023 of the shared table; no invlpg: CR3 is next
    inc ebx
    cmp ebx, SPACES
    jb s_space
    push esi
    mov esi, s_sum
    mov eax, edi
    call put_kv_hex
    pop esi
    inc esi
    cmp esi, 3
    jb s_round

    mov esi, s_bad
    mov eax, ebp
    call put_kv_hex
    mov al, 0
    ret

s_name:   .asciz "paging_spaces\n"
s_sum:    .asciz "round checksum: "
s_bad:    .asciz "reads that saw the wrong frame: "

.include "runtime.S"
