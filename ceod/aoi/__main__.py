"""``python -m ceod.aoi fit …``: the code is :mod:`ceod.cli.aoi`."""

import sys

from ceod.cli.aoi import main

if __name__ == "__main__":
    sys.exit(main())
