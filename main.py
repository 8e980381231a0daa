"""Run the gateway: ``python main.py`` (the same as ``orchd``)."""

from orchd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
