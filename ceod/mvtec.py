"""``python -m ceod.mvtec {aoi,augment} …``: the code is :mod:`ceod.cli.mvtec`."""

import sys

from ceod.cli.mvtec import main

if __name__ == "__main__":
    sys.exit(main())
