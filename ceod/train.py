"""``python -m ceod.train [+experiment=NAME] [key=value ...]`` — the code is :mod:`ceod.cli.train`."""

from ceod.cli.train import cli

if __name__ == "__main__":
    cli()
