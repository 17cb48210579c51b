"""Code every zeroslee service shares: bus vocabulary, configuration, logging, runtime."""

# The code's version (pyproject.toml's, checked by a test): every process logs it at
# start and exports it (`zeroslee_process_info`); each node's heartbeats carry it, so
# `zeroslee-admin nodes` shows which node runs what during a rolling upgrade.
__version__ = "0.1.0"
