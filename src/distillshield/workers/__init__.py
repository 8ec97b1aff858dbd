"""Processes beside the gateways, for a fleet of replicas (`distillshield worker ...`).

- stream.py: the audit event stream on Redis Streams (the gateways' audit sink with `audit.sink: redis`);
- audit.py: the audit writer worker, from the stream into the hash-chained log, exactly once.

Workers import the store and the stream, never the gateway.
"""
