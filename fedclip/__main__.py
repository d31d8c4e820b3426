"""`python -m fedclip ...` runs the same CLI as the `fedclip` command."""

from fedclip.cli.main import main

if __name__ == "__main__":  # importing the module (e.g. to list the package) must not run the CLI
    main()
