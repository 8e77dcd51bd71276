"""``python -m vcfstore``: the command line."""

from vcfstore.app.cli import main

main()
