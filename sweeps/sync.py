"""``python -m sweeps.sync JOURNAL``: see :mod:`sweeps.tracking.sync`."""

from sweeps.tracking.sync import main

if __name__ == "__main__":
    raise SystemExit(main())
