"""A deadline on MLX collectives, kept by a small separate process.

`mx.distributed.init()` waiting for an unreachable ring neighbour, and the
occasional ring `all_sum` that never returns, block inside MLX with the GIL held:
no Python thread or signal handler of the blocked process runs again. So the
deadline is kept by a child process (standard library only) that the trainer arms
before each collective and disarms after it; when a deadline passes it prints the
armed message and terminates the trainer. Its stdin closing (the trainer exited)
ends it.

Protocol on the child's stdin, one line each: `arm SECONDS MESSAGE`, `disarm`.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time


class Watchdog:
    """The trainer's side: a child process that kills this one if a deadline passes."""

    def __init__(self):
        self._proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__),
                                       str(os.getpid())], stdin=subprocess.PIPE)

    def arm(self, seconds: float, message: str) -> None:
        text = " ".join(message.split())  # one line
        self._send(f"arm {seconds:.3f} {text}\n")

    def disarm(self) -> None:
        self._send("disarm\n")

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the watchdog is gone; the collective simply has no deadline


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _serve(pid: int) -> None:
    fd, buf = sys.stdin.fileno(), b""
    deadline, message = None, ""
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            sys.stderr.write(f"Error: {message}\n")
            sys.stderr.flush()
            _kill(pid)
            return
        chunk = os.read(fd, 4096)
        if not chunk:
            return  # the trainer exited
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd, _, rest = line.decode(errors="replace").partition(" ")
            if cmd == "arm":
                seconds, _, message = rest.partition(" ")
                deadline = time.monotonic() + float(seconds)
            elif cmd == "disarm":
                deadline = None


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    _serve(int(sys.argv[1]))
