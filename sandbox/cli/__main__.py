"""`python -m sandbox.cli ARGS` = `pysandbox ARGS`."""
from . import main

main()
