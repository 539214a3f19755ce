"""The CQL side of keyspaces_local: native protocol v4 server and the engine behind it."""
