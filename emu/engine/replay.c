/* The replay engine: svmemu's only C, an INTR hook that sits in front of the machine's Python one.
 *
 * A world switch handled in Python costs tens of microseconds, almost all of it Python's own
 * overhead; the work itself is a few copies between the CPU context, guest RAM and L0's buffers.
 * Python therefore records, after handling an exit the slow way, a *program*: the checks that make
 * the next exit of that kind provably identical in everything the handler read (guards), followed
 * by the copies the handler's effect reduces to for such an exit. When the next exit arrives, this
 * hook runs the program: if every guard holds, it performs the copies and the exit never reaches
 * Python; if one fails, nothing has been changed and the Python hook handles it as before.
 *
 * The engine knows nothing of SVM or of what the programs mean (emu/engine/replay.py builds and
 * documents them). It holds no pointers into Python objects: every address in a program is guest
 * RAM, the context blob or a buffer Python allocated and keeps alive.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum {
    OP_END = 0,
    OP_CMP,        /* memcmp(a, b, len) == 0, else fall back                   */
    OP_EQ64,       /* (*(u64 *)a & c) == b, else fall back                     */
    OP_COMMIT,     /* guards end: nothing before this point had any effect     */
    OP_COPY,       /* memcpy(a, b, len)                                        */
    OP_SET64,      /* *(u64 *)a = b                                            */
    OP_ADD64,      /* *(u64 *)a += b                                           */
    OP_SAVE,       /* uc_context_save into the engine's context                */
    OP_RESTORE,    /* uc_context_restore from it                               */
    OP_FLUSH,      /* uc_ctl(TLB flush)                                        */
    OP_REGREAD,    /* uc_reg_read(register b) into *(u64 *)a                   */
    OP_REGWRITE,   /* uc_reg_write(register b) from *(u64 *)a                  */
};

struct op {
    uint32_t code, len;
    uint64_t a, b, c;
};

typedef int (*ctx_fn)(void *uc, void *ctx);
typedef int (*reg_fn)(void *uc, int regid, void *value);
typedef int (*ctl_fn)(void *uc, int control, ...);
typedef void (*intr_fn)(void *uc, uint32_t intno, void *user);

#define N_INTNO 0x600
#define PER_INTNO 4         /* programs kept per exit: several L2s, or one in several states */

struct engine {
    void *uc;
    void *ctx;
    ctx_fn save, restore;
    reg_fn reg_read, reg_write;
    ctl_fn ctl;
    int64_t flush_control;
    intr_fn fallback;
    uint64_t enabled;
    uint64_t replays;
    uint64_t fallbacks;
    uint64_t seq;           /* bumped by every completed program: Python syncs when it moved */
    uint64_t state;         /* programs guard on it and set it; Python clears it when it runs */
    const struct op *programs[N_INTNO][PER_INTNO];
};

static int run(struct engine *e, const struct op *op)
{
    uint64_t v;
    for (;; op++) {
        switch (op->code) {
        case OP_END:
            return 1;
        case OP_CMP:
            if (memcmp((const void *)op->a, (const void *)op->b, op->len) != 0)
                return 0;
            break;
        case OP_EQ64:
            memcpy(&v, (const void *)op->a, 8);
            if ((v & op->c) != op->b)
                return 0;
            break;
        case OP_COMMIT:
            break;
        case OP_COPY:
            memmove((void *)op->a, (const void *)op->b, op->len);
            break;
        case OP_SET64:
            memcpy((void *)op->a, &op->b, 8);
            break;
        case OP_ADD64:
            memcpy(&v, (const void *)op->a, 8);
            v += op->b;
            memcpy((void *)op->a, &v, 8);
            break;
        case OP_SAVE:
            e->save(e->uc, e->ctx);
            break;
        case OP_RESTORE:
            e->restore(e->uc, e->ctx);
            break;
        case OP_FLUSH:
            e->ctl(e->uc, (int)e->flush_control);
            break;
        case OP_REGREAD:
            e->reg_read(e->uc, (int)op->b, (void *)op->a);
            break;
        case OP_REGWRITE:
            e->reg_write(e->uc, (int)op->b, (void *)op->a);
            break;
        default:
            return 0;
        }
    }
}

/* The UC_HOOK_INTR callback; user data is the engine. */
void replay_intr(void *uc, uint32_t intno, void *user)
{
    struct engine *e = (struct engine *)user;
    if (e->enabled && intno < N_INTNO) {
        for (int i = 0; i < PER_INTNO && e->programs[intno][i] != NULL; i++) {
            if (run(e, e->programs[intno][i])) {
                e->replays++;
                e->seq++;
                return;
            }
        }
    }
    e->fallbacks++;
    e->fallback(uc, intno, user);
}

/* The layout and numbers Python must agree on, as "name=value" words: replay.py compares them
 * with its own ctypes declarations when it loads the library and refuses a library built from a
 * different replay.c, so the two sides cannot drift apart silently. */
#define ABI(name, value) \
    n += snprintf(abi + n, sizeof abi - (size_t)n, "%s=%llu ", name, (unsigned long long)(value))
#define ABI_FIELD(type, field) ABI(#type "." #field, offsetof(struct type, field))

const char *replay_abi(void)
{
    static char abi[2048];
    int n = 0;
    if (abi[0])
        return abi;
    ABI("sizeof(op)", sizeof(struct op));
    ABI_FIELD(op, code); ABI_FIELD(op, len); ABI_FIELD(op, a); ABI_FIELD(op, b); ABI_FIELD(op, c);
    ABI("sizeof(engine)", sizeof(struct engine));
    ABI_FIELD(engine, uc); ABI_FIELD(engine, ctx); ABI_FIELD(engine, save);
    ABI_FIELD(engine, restore); ABI_FIELD(engine, reg_read); ABI_FIELD(engine, reg_write);
    ABI_FIELD(engine, ctl); ABI_FIELD(engine, flush_control); ABI_FIELD(engine, fallback);
    ABI_FIELD(engine, enabled); ABI_FIELD(engine, replays); ABI_FIELD(engine, fallbacks);
    ABI_FIELD(engine, seq); ABI_FIELD(engine, state); ABI_FIELD(engine, programs);
    ABI("N_INTNO", N_INTNO);
    ABI("PER_INTNO", PER_INTNO);
    ABI("OP_END", OP_END); ABI("OP_CMP", OP_CMP); ABI("OP_EQ64", OP_EQ64);
    ABI("OP_COMMIT", OP_COMMIT); ABI("OP_COPY", OP_COPY); ABI("OP_SET64", OP_SET64);
    ABI("OP_ADD64", OP_ADD64); ABI("OP_SAVE", OP_SAVE); ABI("OP_RESTORE", OP_RESTORE);
    ABI("OP_FLUSH", OP_FLUSH); ABI("OP_REGREAD", OP_REGREAD); ABI("OP_REGWRITE", OP_REGWRITE);
    return abi;
}

/* A CPython module only so that setuptools builds and installs the library; it is loaded with
 * ctypes (emu/engine/replay.py) and exports nothing to Python. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "creplay", NULL, -1, NULL};

PyMODINIT_FUNC PyInit_creplay(void)
{
    return PyModule_Create(&module);
}
