"""The SIP load balancer in front of the cluster (see README.md beside this package)."""
