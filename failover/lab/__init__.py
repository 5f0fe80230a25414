"""The network-namespace lab: rehearsals, tests and benchmarks run here."""
