"""`python -m privlearn` is the `privlearn` command."""

from privlearn.cli import main

main()
