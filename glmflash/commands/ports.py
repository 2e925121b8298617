"""Whether this machine can listen on a host:port (standard library only).

Used by `check` and, run as a script before anything heavy is imported, by start.sh:
    python glmflash/commands/ports.py HOST PORT     exit 0 when free, else 1 with the reason on stderr
"""

from __future__ import annotations

import socket
import sys


def cannot_listen(host: str, port: int) -> str | None:
    """None when host:port is free to listen on, else why not (the OS's words)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    reason = cannot_listen(host, port)
    if reason:
        sys.exit(f"start.sh: cannot listen on {host}:{port}: {reason} (choose another port)")
