"""``python -m ceod.audit``: the code is :mod:`ceod.cli.audit`."""

from ceod.cli.audit import main

if __name__ == "__main__":
    main()
