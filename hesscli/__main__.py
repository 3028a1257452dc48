"""``python -m hesscli`` runs the command-line tool."""

from hesscli.cli.app import main

if __name__ == "__main__":
    main()
