"""``python -m lenskit``: the command line (:mod:`lenskit.cli`)."""

from lenskit.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
