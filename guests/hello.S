# hello.S: the smallest guest.  Prints a greeting and checks that the loader passed the
# multiboot magic 0x2BADB002 in EAX.  Expected: one "ok" line, exit status pass.
.include "prelude.inc"

main:
    print "Hello from an svmemu guest!\n"
    check_eq [mb_magic], 0x2badb002, "multiboot magic in EAX"
    ret
