# triplefault.S: a triple fault shuts the machine down.
# Prints "triplefault: loading an empty IDT, then ud2", loads an IDT with limit 0 and executes
# ud2: #UD cannot be delivered (#GP), nor can the #GP (#DF), nor the #DF: triple fault.
# Expected: that one line, then shutdown.  No TAP report, no debug-exit.  QEMU resets the
# machine, so run it with -no-reboot (it then exits with status 0); svmemu stops with reason
# "shutdown".  Anything printed after the line (e.g. "Bail out!") is a failure.
.include "prelude.inc"

main:
    print "triplefault: loading an empty IDT, then ud2\n"
    lidt [rip + empty_idt_ptr]
    ud2
    print "Bail out! still running after the triple fault\n"
    mov edi, 1
    jmp exit

empty_idt_ptr:
    .word 0
    .quad 0
