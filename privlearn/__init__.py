"""privlearn: machine learning on data its owners will not reveal."""

__version__ = "0.1.0"
