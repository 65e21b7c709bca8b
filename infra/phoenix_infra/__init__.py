"""Components of the phoenix.deploy infrastructure program, one package per platform.

Each platform package exposes ``build(cfg) -> dict`` returning the stack
outputs contract (see ``contract.py``)."""
