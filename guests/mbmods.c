/* A multiboot kernel in C, as hobby kernels are written: built with gcc -m32 -ffreestanding
 * -nostdlib and linked by a default GNU ld (-m elf_i386 -Ttext=0x100000), so its first PT_LOAD
 * holds the ELF headers below 1 MiB.  Prints what the loader passed (command line, modules:
 * where, how long, their command lines, their first bytes) on COM1 and exits through
 * isa-debug-exit. */
typedef unsigned int u32;
typedef unsigned char u8;

#define MB_FLAGS 0x00000003u     /* page-align modules, memory info */
__attribute__((section(".text.multiboot"), used, aligned(4)))
static const u32 mb_header[3] = {0x1BADB002u, MB_FLAGS, -(0x1BADB002u + MB_FLAGS)};

static inline void outb(unsigned short port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(unsigned short port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc(char c) { while (!(inb(0x3FD) & 0x20)) {} outb(0x3F8, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(u32 v) { puts("0x"); for (int i = 28; i >= 0; i -= 4) putc("0123456789abcdef"[(v >> i) & 15]); }

struct mod { u32 start, end, cmdline, pad; };

void kmain(u32 magic, u32 *mbi)
{
    puts("magic "); puthex(magic); puts("\n");
    puts("flags "); puthex(mbi[0]); puts("\n");
    puts("cmdline "); puthex(mbi[4]); puts(" '"); puts((const char *)mbi[4]); puts("'\n");
    u32 n = mbi[5];
    puts("mods_count "); puthex(n); puts("\n");
    puts("mods_addr "); puthex(mbi[6]); puts("\n");
    struct mod *m = (struct mod *)mbi[6];
    for (u32 i = 0; i < n; i++) {
        puts("mod "); puthex(m[i].start); puts(" "); puthex(m[i].end);
        puts(" "); puthex(m[i].cmdline); puts(" '"); puts((const char *)m[i].cmdline); puts("' ");
        const u8 *p = (const u8 *)m[i].start;
        for (u32 j = 0; j < 8 && m[i].start + j < m[i].end; j++) putc((char)p[j]);
        puts("\n");
    }
    outb(0xF4, 0);
    for (;;) __asm__ volatile("hlt");
}

__asm__(".pushsection .text\n.globl _start\n_start:\n"
        "  mov $stack_top, %esp\n  push %ebx\n  push %eax\n  call kmain\n"
        ".popsection\n.pushsection .bss\n.align 16\n.space 4096\nstack_top:\n.popsection\n");
