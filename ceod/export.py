"""``python -m ceod.export``: the code is :mod:`ceod.cli.export`."""

from ceod.cli.export import main

if __name__ == "__main__":
    main()
