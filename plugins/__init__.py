"""Built-in userrl plugins. Each sub-package is loaded through the `userrl` entry-point group."""
