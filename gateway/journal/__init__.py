"""The journal: what happened to each message. Every received message (archive), its delivery to
each remote sink, which resource versions it wrote (provenance), and the dead letters."""
