"""`python -m keysvc`: the same command line as the `keysvc` console script."""

import sys

from keysvc.app.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
