"""Everything that meets the outside world: the command line (cli/), OSC (osc/), live playback (live/) and the
benchmarks (bench/). May import engine/, export/ and presets/; nothing imports bridge/."""
