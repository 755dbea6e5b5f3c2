"""``python -m bench``: run the foundation benchmark (see ``bench.foundation``)."""

from __future__ import annotations

import sys

from bench.foundation import main

if __name__ == "__main__":
    sys.exit(main())
