"""``python -m scanml`` is the ``scanml`` command."""

from scanml.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
