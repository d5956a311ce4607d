"""`python -m modalsynth` and `torchrun -m modalsynth`: the command line."""

from .cli import main

main()
