"""The `fedclip` command line: thin commands over the library."""
