"""Clients of a running daemon: the Snapshots protocol over gRPC, the status socket and
the layer reports it carries."""
