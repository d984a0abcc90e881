"""`python -m privlearn` is the `privlearn` command."""

from privlearn.cli import app

app()
