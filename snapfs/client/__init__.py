"""Clients of a running daemon: the Snapshots protocol over gRPC, the status socket and
the layer reports it carries.

Must not serve anything: the servers are ``snapfs.daemon``'s.
"""
