"""boutique: a strongly consistent, sharded key-value store and the Raft library under it."""
