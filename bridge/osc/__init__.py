"""The OSC side of the bridge: wire format, UDP transport, dispatcher, shared state, server, commands,
subscriptions, access limits (allow list, reply budget, shared secret), address space and DAW dialects.
Modules here may import engine/ and presets/, never bridge/cli."""
