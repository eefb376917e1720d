"""What crosses between the sweep driver and its workers (filled in below)."""
