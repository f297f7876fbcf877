"""The OSC side of the bridge: wire format, UDP transport, dispatcher, shared state, server, subscriptions,
address space and DAW dialects. Modules here may import engine/ and presets/, never bridge/cli."""
