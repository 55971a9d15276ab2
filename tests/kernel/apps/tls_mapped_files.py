"""Maps files executable, as a process that loaded them would (argv: the files),
prints ``mapped``, then waits for stdin to close."""

import mmap
import sys

maps = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        maps.append(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_EXEC))
print("mapped", flush=True)
sys.stdin.read()
