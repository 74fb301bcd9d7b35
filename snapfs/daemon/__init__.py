"""``snapfs serve``: the gRPC snapshots service, the status socket and metrics, started in order.

Translates the wire onto ``snapfs.snapshot``. Must not hold snapshot or layer logic of its
own.
"""
