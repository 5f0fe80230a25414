"""failover: heartbeat-style IP failover for planned machine swaps and unplanned takeovers."""

__version__ = "0.1.0"
