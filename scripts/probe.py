"""Exit 0 when a URL answers 200, 1 otherwise: start.sh's readiness probe and the container's
HEALTHCHECK (standard library only, so it runs before and without the package).

    python scripts/probe.py                 http://127.0.0.1:$GLMFLASH_PORT/health
    python scripts/probe.py URL [TIMEOUT]
"""

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else f"http://127.0.0.1:{os.environ.get('GLMFLASH_PORT', '8080')}/health"
    timeout = float(argv[2]) if len(argv) > 2 else 5.0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (OSError, urllib.error.URLError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
