"""``python -m pucli``."""

from pucli.cli import main

main()
