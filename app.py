"""Launcher: load the model from GLMFLASH_* settings and serve the web page + API on one port."""

from glmflash.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve"]))
