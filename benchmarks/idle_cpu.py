"""CPU that an idle `python -m glmflash serve` uses, with the web page open in headless Chromium,
after it has answered a request: percent of one core over a quiet window, busiest threads first.

    .venv/bin/python benchmarks/idle_cpu.py                 # tiny model, 20 s window
    .venv/bin/python benchmarks/idle_cpu.py --seconds 60 --no-page
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

TICK = os.sysconf("SC_CLK_TCK")


def ticks(stat: Path) -> int:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def threads(pid: int) -> dict[str, int]:
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            found[f"{name} ({task.name})"] = ticks(task / "stat")
        except OSError:
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-page", action="store_true", help="measure without the page open")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "glmflash", "serve", "--model", "tiny", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        answer = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        requests.post(f"{url}/v1/chat/completions", json=answer, timeout=60).raise_for_status()
        browser = None
        if not args.no_page:
            from playwright.sync_api import sync_playwright

            playwright = sync_playwright().start()
            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_selector("textarea", timeout=60_000)
        time.sleep(3)  # let start-up work settle
        before, started = threads(server.pid), time.monotonic()
        time.sleep(args.seconds)
        after, elapsed = threads(server.pid), time.monotonic() - started
        used = {name: after[name] - before.get(name, 0) for name in after}
        total = sum(used.values()) / TICK / elapsed * 100
        page_state = "without the page" if args.no_page else "with the page open"
        print(f"idle server {page_state}: {total:.2f}% of one core over {elapsed:.0f} s")
        for name, spent in sorted(used.items(), key=lambda item: -item[1])[:5]:
            if spent:
                print(f"  {name}: {spent / TICK / elapsed * 100:.2f}%")
        if browser is not None:
            browser.close()
            playwright.stop()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
