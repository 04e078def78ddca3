# memtouch.S: writes one qword to every 4 KiB page from 4 MiB up to @TOP@ (the guest's RAM
# minus 4 MiB), so a resident-set measurement sees the whole guest RAM in use.
.include "prelude.inc"

main:
    mov rdi, 0x400000
    mov rsi, @TOP@
    xor ecx, ecx
.Ltouch:
    mov [rdi], rdi
    add rdi, 0x1000
    inc rcx
    cmp rdi, rsi
    jb .Ltouch
    check_eq rcx, @PAGES@, "pages touched"
    ret
