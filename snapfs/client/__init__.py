"""Clients of a running daemon: the Snapshots protocol over gRPC, and the status socket."""
