/* AFL's edge coverage as a Unicorn block hook in C.
 *
 * A fuzzer's child records, for every executed translated block, the edge from the block before
 * it into AFL's shared map. A Python block hook costs a Python call per block, which was the
 * largest single cost of an input under afl-fuzz; this is the same arithmetic without it.
 * emu/engine/edge_coverage.py holds the Python twin (the fallback without a compiler, and the
 * reference a test compares this with) and checks this file's layout at load.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Owned by Python (a ctypes structure it keeps alive); `area` is AFL's map of `mask` + 1 bytes. */
struct edge_state {
    uint8_t *area;
    uint64_t prev;
    uint64_t mask;
};

/* uc_cb_hookcode_t: void (*)(uc_engine *uc, uint64_t address, uint32_t size, void *user_data) */
void edge_coverage_block(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct edge_state *s = user;
    uint64_t cur = ((address >> 4) ^ (address << 8)) & s->mask;
    (void)uc;
    (void)size;
    s->area[cur ^ s->prev]++;
    s->prev = cur >> 1;
}

/* "name=offset ..." of struct edge_state, compared with the ctypes structure at load. */
const char *edge_coverage_abi(void)
{
    static char text[96];
    snprintf(text, sizeof text, "area=%zu prev=%zu mask=%zu size=%zu",
             offsetof(struct edge_state, area), offsetof(struct edge_state, prev),
             offsetof(struct edge_state, mask), sizeof(struct edge_state));
    return text;
}
