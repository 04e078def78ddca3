"""``python -m emu.cli``: how tests, bench and the AFL++ child start svmemu without the script."""
from emu.cli.command import start

start()
