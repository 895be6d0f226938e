"""``python -m ceod.predict``: the code is :mod:`ceod.cli.predict`."""

from ceod.cli.predict import main

if __name__ == "__main__":
    main()
