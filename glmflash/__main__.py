"""`python -m glmflash`: hands over to the command line in cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
