"""``python -m ceod.report``: the code is :mod:`ceod.cli.report`."""

from ceod.cli.report import main

if __name__ == "__main__":
    main()
