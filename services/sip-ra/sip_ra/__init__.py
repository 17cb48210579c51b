"""The node's SIP resource adaptor (see README.md beside this package)."""
