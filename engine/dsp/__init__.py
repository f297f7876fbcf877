"""The mastering chain as pure batched functions of real-unit parameters: filters, dynamics, the chain.
May import engine.params and engine.errors only."""
