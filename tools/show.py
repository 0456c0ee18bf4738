"""Same as `openmix-show`, for those who prefer `python tools/show.py ...` from a checkout."""

from openmix.cli.show import main

if __name__ == "__main__":
    raise SystemExit(main())
