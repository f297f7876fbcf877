"""Everything that meets the outside world: the command line, OSC, live playback."""
