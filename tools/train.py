"""Same as `openmix-train`, for those who prefer `python tools/train.py ...` from a checkout."""

from openmix.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
