"""What assembles and runs each process: the worker, the MLLP listener, the supervisor of
``hl7gw run``, the embedded Redis, the operator views and the offline converter. The stage
packages (mllp, queue, convert, validate, deliver, api) and the libraries below them (hl7, store)
know nothing of processes; only this package wires them together (docs/architecture.md)."""
