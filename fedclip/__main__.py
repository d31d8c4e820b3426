"""`python -m fedclip ...` runs the same CLI as the `fedclip` command."""

from fedclip.cli.main import main

main()
