"""``python -m rmnet``: the same command line as ``rmnet`` (and ``torchrun -m rmnet train …``)."""

from rmnet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
