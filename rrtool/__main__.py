"""``python -m rrtool``: the same as the ``rrtool`` command."""

from rrtool.cli import main

main()
