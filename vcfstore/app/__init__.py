"""The application around the library: the ``vcfstore`` command line, the demo, tables for people."""
