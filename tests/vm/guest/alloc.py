"""Guest helper: touch MB MiB of anonymous memory in STEP-MiB chunks, printing
"allocated N" after each chunk; then print "done" and, with HOLD=1, wait for stdin to
close (so a test can inspect or migrate the pages). Run with `python -S` (no site
import: starts fast in the emulated guest).

usage: python -S alloc.py MB STEP [HOLD]
"""

import sys


def main() -> None:
    mb, step = int(sys.argv[1]), int(sys.argv[2])
    hold = len(sys.argv) > 3 and sys.argv[3] == "1"
    chunks = []
    done = 0
    while done < mb:
        n = min(step, mb - done)
        chunks.append(b"\x01" * (n << 20))  # written, so every page is resident
        done += n
        print(f"allocated {done}", flush=True)
    print("done", flush=True)
    if hold:
        sys.stdin.read()


if __name__ == "__main__":
    main()
