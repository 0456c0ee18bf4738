"""Same as `openmix-eval`, for those who prefer `python tools/eval.py ...` from a checkout."""

from openmix.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
