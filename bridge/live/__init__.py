"""The live engine behind `refmaster serve` (engine.py: LiveEngine, the render loop) and its outputs (outputs.py).
It may import engine/, export/, presets/ and bridge/osc; never bridge/cli."""
