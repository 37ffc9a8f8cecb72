"""Test doubles shipped with boutique: simulated cluster, history recording, linearizability checking."""
