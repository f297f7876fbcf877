"""The benchmarks behind `refmaster bench` (chain, OSC load, streaming render, model and ITO); each registers its
own targets. May import engine/, export/, presets/, bridge/osc and bridge/live; never bridge/cli command modules."""
