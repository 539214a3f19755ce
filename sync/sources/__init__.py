"""Sources: turn CQL rows and CDC records into `Change`s."""
