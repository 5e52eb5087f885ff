"""``python -m loramgr`` runs the CLI."""

from loramgr.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
