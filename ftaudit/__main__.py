"""``python -m ftaudit`` runs the command-line interface."""

from ftaudit.cli import main

if __name__ == "__main__":
    main()
