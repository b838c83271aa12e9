/* ifwatch.c - stop the CPU at the first translated block that starts with IF set.
 *
 * Under the native technique the guest runs at real ring 0, so sti, popf and iret
 * change EFLAGS.IF without the monitor seeing it: no trap, no hook. QEMU (and so
 * Unicorn) ends a translated block after each of them (sti's shadow instruction
 * even gets a block of its own), so "IF became 1" is always visible at the start of
 * the next block. This file is a UC_HOOK_BLOCK callback that looks there, and only
 * while the monitor has armed it: disarmed it is one load and one branch per block.
 *
 * It is compiled by the package's install step (setup.py) and loaded with ctypes by
 * hypervisor/machine/native/ifwatch.py. It needs no Unicorn header and links against
 * nothing: the two library functions it calls arrive as pointers in the watch record,
 * taken from the libunicorn the Python binding has already loaded. The types below are
 * the few that Unicorn 2's uc_cb_hookcode_t and uc_reg_read use.
 */
#include <stdint.h>

typedef int (*uc_reg_read_fn)(void *uc, int regid, void *value);
typedef int (*uc_emu_stop_fn)(void *uc);

/* Shared with Python (ctypes.Structure _Watch in ifwatch.py): keep both in step. */
struct watch {
    volatile int32_t armed;     /* set by the monitor; cleared here when the watch fires */
    volatile int32_t fired;     /* 1 once the CPU was stopped because IF was 1 */
    uint64_t address;           /* start of the block the CPU stopped at (its EIP) */
    uint64_t eflags;            /* EFLAGS read there */
    int32_t eflags_regid;       /* UC_X86_REG_EFLAGS, passed in so no header is needed */
    int32_t pad;
    uc_reg_read_fn reg_read;
    uc_emu_stop_fn emu_stop;
    const volatile uint32_t *eflags_at;  /* QEMU's env->eflags, where IF lives; NULL: ask reg_read */
};

#define EFLAGS_IF (1u << 9)

/* uc_cb_hookcode_t: void (*)(uc_engine *uc, uint64_t address, uint32_t size, void *user_data) */
void hv_ifwatch_block(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct watch *w = user_data;
    uint64_t eflags = 0;

    (void)size;
    if (!w->armed)
        return;
    if (w->eflags_at != 0)
        eflags = *w->eflags_at;     /* IF is never lazy in QEMU: one load, no flag computation */
    else if (w->reg_read(uc, w->eflags_regid, &eflags) != 0)
        return;
    if (!(eflags & EFLAGS_IF))
        return;
    /* One shot: the monitor delivers the interrupt and re-arms if another waits. The
     * stop is taken before the block's first instruction runs (the hook is emitted ahead
     * of the block's exit check), so EIP is this block's start and nothing of it ran. */
    w->armed = 0;
    w->fired = 1;
    w->address = address;
    w->eflags = eflags;
    w->emu_stop(uc);
}
