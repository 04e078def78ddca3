"""What a user attaches to a running machine to look inside it: the gdb stub and reverse
execution, memory-access traces, memory-type queries, coverage outputs and the fuzzing harness.
None of it adds a hook unless asked."""
