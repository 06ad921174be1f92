"""``python -m eventlog``: the same as the ``eventlog`` command."""

from .cli import main

main()
