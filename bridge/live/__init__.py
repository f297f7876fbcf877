"""The live engine behind `refmaster serve` (engine.py: ChainProcessor, LiveEngine, the render loop), its outputs
(outputs.py), the JACK insert of `serve --insert` (insert.py, run in a process of its own by insert_process.py,
with JACK port latencies in jack_latency.py) and the A/B controls, bypass and amount (monitor.py).
It may import engine/, export/, presets/ and bridge/osc; never bridge/cli."""
