"""`svmemu fuzz`'s options. Apart from the fuzzing code (emu/cli/fuzz.py) because every
`svmemu` start builds the whole parser, and importing the harness for it cost each plain run."""
from __future__ import annotations

import argparse

DEFAULT_PERSISTENT = 1000


def add_parser(sub, size_type, positive_int, positive_float, options: bool = True) -> None:
    """`options` False: the name and help line only (another subcommand is being parsed)."""
    p = sub.add_parser("fuzz",
                       help="fuzz a guest with AFL++ (or run one input with --run-input)")
    if not options:
        return
    p.add_argument("image", help="multiboot kernel or .S guest source")
    p.add_argument("--append", default="", help="kernel command line")
    p.add_argument("-m", "--memory", type=size_type, default=128 << 20, help="guest RAM")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--input-at", metavar="ADDR|SYMBOL[:MAXLEN]",
                       help="write each input to guest memory here (MAXLEN default 4096)")
    where.add_argument("--input-vmcb", metavar="FIELD[,FIELD...]",
                       help="write each input over these fields of the vmcb12 of the next VMRUN")
    p.add_argument("--start-at", "--snapshot-at-symbol", dest="start_at",
                   metavar="ADDR|SYMBOL", help="run until RIP reaches this, then snapshot")
    p.add_argument("--end-at", action="append", default=[], metavar="ADDR|SYMBOL",
                   help="an input's run ends when RIP reaches this (repeatable)")
    p.add_argument("--crash-on", action="append", default=[], metavar="RULE",
                   help="triple-fault | status=N | serial=REGEX | vmexit=CODE (repeatable; "
                        "default triple-fault)")
    p.add_argument("--run-input", metavar="FILE", help="run this one input, say crash or not")
    p.add_argument("--input-timeout", type=positive_float, metavar="SECONDS",
                   help="per-input time limit (--run-input default 10 s; under AFL, -t)")
    p.add_argument("-i", "--seeds", metavar="DIR", help="AFL++ seed directory")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="AFL++ output directory (with --minimize: the minimized file)")
    p.add_argument("--duration", type=positive_int, metavar="SECONDS",
                   help="stop AFL++ after this long (afl-fuzz -V)")
    p.add_argument("--until-crash", action="store_true", help="stop AFL++ at the first crash")
    p.add_argument("--afl-timeout", type=positive_int, metavar="MS",
                   help="AFL++ per-input timeout (afl-fuzz -t)")
    p.add_argument("--afl-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for afl-fuzz (repeatable)")
    p.add_argument("--persistent", type=positive_int, default=DEFAULT_PERSISTENT,
                   help=f"inputs per fork (default {DEFAULT_PERSISTENT})")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run N afl-fuzz instances on one output folder: a main (-M) and N-1 "
                        "secondaries (-S), as AFL++ runs on N cores")
    p.add_argument("--afl-name", default="", metavar="NAME",
                   help="name the instances NAME-main, NAME-s1, ... (unique per machine when "
                        "several machines sync one campaign)")
    p.add_argument("--secondaries-only", action="store_true",
                   help="start only secondaries (another machine runs the main instance)")
    p.add_argument("--minimize", metavar="CRASH",
                   help="shrink this crashing input with afl-tmin (it must crash with the same "
                        "options) and write it to -o FILE (default CRASH.min)")
    p.add_argument("--trace", default="", metavar="CATS",
                   help="with --run-input: trace the input's run (categories as svmemu run)")
    p.add_argument("--trace-file", help="with --run-input --trace: write the trace here")
    p.add_argument("-s", dest="gdb_default", action="store_true",
                   help="with --run-input: gdb stub on tcp::1234")
    p.add_argument("-S", dest="gdb_wait", action="store_true",
                   help="with --run-input: wait for gdb before the input's first instruction")
    p.add_argument("--gdb", metavar="tcp:[HOST]:PORT", help="with --run-input: gdb stub here")
    p.add_argument("--afl-child", metavar="FILE", help=argparse.SUPPRESS)
    from svm_ext.pat import MODELS
    p.add_argument("--pat-model", choices=MODELS, default="architectural")
