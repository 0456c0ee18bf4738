"""Same as `openmix-report`, for those who prefer `python tools/report.py ...` from a checkout."""

from openmix.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())
