/* tlbfill.c - the TLB fill for a guest running with paging off: stores at full speed.
 *
 * Since Unicorn 2.1.2 (a fix for self-modifying code), notdirty_write in
 * qemu/accel/tcg/cputlb.c marks a TLB entry "dirty" - which lets the translated code
 * store straight into host memory - only when the entry is not executable
 * (tlbe->addr_code == -1). QEMU's own test, "does this page hold translated code?", is
 * stubbed out in Unicorn, so this is Unicorn's stand-in for it. But with guest paging
 * off the x86 walker gives every page read, write and execute, so no entry is ever
 * dirty and every guest store runs helper_*_st*_mmu: two memory-map lookups and a check
 * for translated code to invalidate, 5-10x the cost of the store. (A paged guest that
 * sets NX on its data pages does not pay it, which is how the cause was found.)
 *
 * Unicorn lets a program replace the walker: in UC_TLB_VIRTUAL mode a UC_HOOK_TLB_FILL
 * callback fills each TLB entry. This file is that callback, for paging off: the
 * physical address is the linear one (as the walker gives it), the page is always
 * readable and writable, and it is executable only for an instruction fetch or when an
 * instruction was ever fetched from it before ("executed", a sticky bit per page). So a
 * data page gets an entry without execute, and after its first store Unicorn's own
 * notdirty_write lets every later store take the fast path; a page that holds code keeps
 * execute, so every store to it stays on the slow path, which is where QEMU looks for
 * translated code to throw away: self-modifying code works as before.
 *
 * One gap that needs care: QEMU keeps one TLB per MMU index (kernel and user accesses
 * differ), and a data entry made dirty in one index before the page's first fetch would
 * let stores in that index skip the code check for good. So the first fetch from a page
 * flushes the whole TLB (once per code page; afterwards every fill of that page, in any
 * index, gives execute).
 *
 * Paging on is not this file's business: the CPU's own walker sets accessed and dirty
 * bits and raises #PF. When a fill finds CR0.PG set, the callback refuses it and raises
 * `paging`: emu_start then fails with UC_ERR_EXCEPTION, EIP on the instruction, nothing
 * of it done, and the monitor switches the CPU back to its walker (UC_TLB_CPU) and
 * restarts (hypervisor/machine/native/tlbfill.py). A CR0 write that changes PG flushes
 * the TLB, so the first access after it always comes here.
 *
 * Built by the package's install step (setup.py), loaded with ctypes; like the other
 * files here it needs no Unicorn header and links against nothing: the two library
 * functions it calls arrive as pointers, and the constants as fields.
 */
#include <stdbool.h>
#include <stdint.h>

typedef int (*uc_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*uc_ctl_fn)(void *uc, int control, ...);

struct uc_tlb_entry {           /* unicorn.h: struct uc_tlb_entry */
    uint64_t paddr;
    int perms;                  /* uc_prot */
};

enum { PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4 };     /* uc_prot, fixed by Unicorn's ABI */

#define CR0_PG (1u << 31)
#define PAGE_SHIFT 12

/* Shared with Python (ctypes.Structure _Fill in tlbfill.py): keep both in step. */
struct fill {
    volatile int32_t paging;    /* set here when a fill found CR0.PG: the monitor must switch walkers */
    int32_t cr0_regid;          /* UC_X86_REG_CR0 */
    int32_t fetch_type;         /* UC_MEM_FETCH */
    int32_t flush_control;      /* UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0) */
    uint64_t fills;             /* entries filled (statistics, and tests) */
    uint64_t code_pages;        /* pages whose first fetch set their "executed" bit */
    uc_reg_read_fn reg_read;
    uc_ctl_fn ctl;
    uint8_t *executed;          /* one bit per 4 KiB page of the 4 GiB linear space */
};

/* uc_cb_tlbevent_t: bool (*)(uc_engine *uc, uint64_t vaddr, uc_mem_type type,
 *                            uc_tlb_entry *result, void *user_data) */
bool hv_tlb_fill(void *uc, uint64_t vaddr, int type, struct uc_tlb_entry *entry, void *user_data)
{
    struct fill *f = user_data;
    uint64_t cr0 = 0;
    uint32_t page = (uint32_t)(vaddr >> PAGE_SHIFT) & 0xFFFFF;
    uint8_t bit = (uint8_t)(1u << (page & 7));

    if (f->reg_read(uc, f->cr0_regid, &cr0) != 0 || (cr0 & CR0_PG)) {
        f->paging = 1;          /* the CPU's walker must translate this: refuse, the monitor restarts */
        return false;
    }
    if (type == f->fetch_type && !(f->executed[page >> 3] & bit)) {
        f->executed[page >> 3] |= bit;
        f->code_pages++;
        /* Entries of this page made earlier, for data, may be dirty in another MMU index:
         * drop them all, so every entry of the page from now on has execute. */
        f->ctl(uc, f->flush_control);
    }
    f->fills++;
    entry->paddr = vaddr & ~(uint64_t)0xFFF;
    entry->perms = PROT_READ | PROT_WRITE | ((f->executed[page >> 3] & bit) ? PROT_EXEC : 0);
    return true;
}
