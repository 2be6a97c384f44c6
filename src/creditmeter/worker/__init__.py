"""Background work: periodic sweeps that keep the ledger current (expiry of due lots)."""
