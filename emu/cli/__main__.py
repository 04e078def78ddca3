"""``python -m emu.cli``: how tests, bench and the AFL++ child start svmemu without the script."""
import sys

from emu.cli.main import main

sys.exit(main())
