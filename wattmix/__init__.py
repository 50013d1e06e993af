"""wattmix: event-driven dispatch of AI compute, bitcoin mining and grid sell-back.

Packages (the layout is the architecture):

- ``schemas``  the wire contract: pydantic v2 models, orjson codec, site configuration.
- ``dispatch`` the pure decision engine (no I/O, no wall clock): state fold, event-time
               clock, merit-order dispatch, accounting identity. Shared by live and backtest.
- ``streams``  Faust app: thin adapters from Kafka topics to ``dispatch`` and back.
- ``sinks``    the DuckDB archive: idempotent, Arrow-batched.
- ``wattmix``  the CLI, the embedded broker, the demo scenario.
"""

__version__ = "0.1.0"
