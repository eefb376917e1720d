"""``python -m sweeps.submit --space NAME``: see :mod:`sweeps.driver.submit`."""

from sweeps.driver.submit import main

if __name__ == "__main__":
    raise SystemExit(main())
