"""Study runners that chain fedclip's stages; the CLI's `demo` is the smallest of them."""
