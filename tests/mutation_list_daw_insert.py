"""Mutations guarding refmaster in the DAW (issue 11, parts 2 and 3), tested in test_insert: the JACK
insert's latency and its report to JACK, the bypass (loudness-matched, aligned, crossfaded) and the
amount, live and in the address space (see tests/mutations.py for the format).

The JACK tests named here use the synthesised song, not ../shared/audio (absent from the copy the
mutation check runs in), so that they run rather than skip there."""

from mutations import Mutation

INS = "tests/test_insert.py"
OSC_INSERT = f"{INS}::test_insert_takes_osc_bypass_and_saves_the_preset"
SPACE = f"{INS}::test_bypass_and_amount_in_the_address_space"
BYPASS = f"{INS}::test_bypass_is_the_input_at_the_processed_loudness_and_is_crossfaded"
BYPASS_GAIN = f"{INS}::test_bypass_gain_is_the_last_3_s_loudness_and_ramps_within_each_block"

MUTATIONS = [
    # the insert's latency: what it delays by, what it prints and what it tells JACK
    Mutation("insert-latency-without-the-chain", "JackInsert.__init__",
             "self.latency = self.ahead + int(processor.backend.latency)", "self.latency = self.ahead",
             (OSC_INSERT,), "the insert prints and reports its ring's delay but not the chain's own 128 frames"),
    Mutation("insert-latency-not-reported", "LatencyReporter._on_latency",
             "r.min, r.max = r.min + extra, r.max + extra", "r.min, r.max = r.min, r.max",
             (OSC_INSERT,), "JACK is never told the insert's latency: a DAW cannot compensate it"),
    Mutation("insert-playback-latency-wrong-way", "LatencyReporter._on_latency",
             "zip(self.outputs, self.inputs)", "zip(self.inputs, self.outputs)",
             (OSC_INSERT,), "the playback pass sets the outputs' latency from the inputs' (JACK's convention reversed)"),
    Mutation("insert-freewheel-plays-silence", "JackInsert._process",
             "if ready < frames and self.freewheeling:", "if False:",
             (OSC_INSERT,), "a DAW's export through the insert (freewheeling) gets silence where a block was not ready"),
    Mutation("insert-shutdown-not-noticed", "JackInsert._shutdown",
             "self.stopped.set()", "pass",
             (f"{INS}::test_insert_problems_are_one_line_and_the_preset_is_saved",),
             "a JACK server that goes away leaves serve --insert running, nothing said, nothing saved"),
    Mutation("insert-missing-port-accepted", "JackInsert._ports",
             "if port is None or not port.is_audio or port.is_output != is_output:", "if False:",
             (f"{INS}::test_insert_problems_are_one_line_and_the_preset_is_saved",),
             "--connect-from a port that does not exist is not one clear line"),
    # the audio in a process of its own
    Mutation("insert-state-not-forwarded", "InsertProcess._forward",
             "new, arrivals = self.state.take_for_block()", "new, arrivals = None, []",
             (OSC_INSERT,), "OSC changes reach serve's state but never the audio process"),
    Mutation("insert-child-takes-ctrl-c", "run_child",
             "signal.signal(s, signal.SIG_IGN)", "pass",
             (OSC_INSERT,), "Ctrl-C kills the audio process mid-block instead of the parent stopping it in order"),
    Mutation("insert-forward-drops-arrivals", "StateFeed.put",
             "self._arrivals.extend(arrivals)", "pass",
             (f"{INS}::test_bench_insert_reports_jack_figures_under_osc_load",),
             "the audio process never learns when messages arrived: no message -> audible latency"),
    Mutation("insert-timings-unbounded", "_timings", "deque(maxlen=TIMINGS_KEPT)", "deque()",
             (f"{INS}::test_a_long_session_keeps_bounded_timings",),
             "a session of hours keeps every block's and every message's timing: memory without bound"),
    # the song player at the JACK server's rate
    Mutation("insert-serve-plays-at-the-songs-rate", "cmd_serve",
             "rate = server_rate if use_jack and server_rate else chain_rate(song.rate)", "rate = chain_rate(song.rate)",
             (f"{INS}::test_serve_plays_a_song_at_the_jack_servers_rate",),
             "serve --input on a 48 kHz JACK server runs the chain at the song's 44.1 kHz and is refused"),
    # amount
    Mutation("insert-amount-ignored-by-scaling", "scaled_chain",
             "s.from_normalized(d + a * (s.to_normalized(v) - d))", "s.from_normalized(s.to_normalized(v))",
             (f"{INS}::test_amount_scales_every_move_from_neutral",), "the amount does not scale the preset's moves"),
    Mutation("insert-amount-scaled-linearly", "scaled_chain",
             "s.from_normalized(d + a * (s.to_normalized(v) - d))", "s.default + a * (v - s.default)",
             (f"{INS}::test_amount_scales_every_move_from_neutral",),
             "the amount moves frequencies and times linearly in their units, not in the faders' normalised form"),
    Mutation("insert-amount-not-applied-mid-stream", "ChainProcessor._take",
             'return scaled_chain(new, control_value(self.controls, "amount")), arrivals', "return new, arrivals",
             (f"{INS}::test_amount_follows_osc_mid_stream",), "an amount sent while the audio runs is never heard"),
    # bypass
    Mutation("insert-bypass-not-loudness-matched", "Monitor.mix",
             "gain = 10.0 ** (self.match.add(dry, y) / 20.0)", "gain = 1.0",
             (BYPASS,), "the bypass is the input at its own level: A/B compares level, not tone"),
    Mutation("insert-bypass-not-aligned", "Monitor.mix",
             "dry = self.dry.process(x)", "dry = x",
             (BYPASS,), "the bypassed signal is not delayed by the chain's latency: A and B are not sample-aligned"),
    Mutation("insert-bypass-stepped", "Monitor.mix",
             "w = w0 + (w1 - w0) * ramp", "w = w1 + 0.0 * ramp",
             (BYPASS,), "the bypass switches in one step (a click) instead of a crossfade across a block"),
    Mutation("insert-bypass-gain-stepped", "Monitor.mix",
             "g = g0 + (gain - g0) * ramp", "g = gain + 0.0 * ramp",
             (BYPASS_GAIN,), "the bypass gain jumps from block to block instead of ramping"),
    Mutation("insert-bypass-window-not-short-term", "LoudnessMatch.add",
             "while self._n - self._blocks[0][2] >= self._window:", "while False:",
             (BYPASS_GAIN,), "the loudness match averages over everything so far, not BS.1770's 3 s short-term window"),
    # the address space
    Mutation("insert-bypass-any-number-accepted", "OscServer._control_handler",
             "float(args[0]) in (0.0, 1.0)", "True",
             (SPACE,), "/refmaster/bypass 2 is taken as bypassed instead of refused with an error reply"),
    Mutation("insert-amount-clamped-silently", "OscServer._control_handler",
             'f"{v:g} is outside 0…1; clamped to {applied:g}") if clamped else None', 'f"") if False else None',
             (SPACE,), "an amount outside 0…1 is clamped without a warning reply"),
    Mutation("insert-controls-not-dumped", "Subscriptions.all_keys",
             ' + [f"control.{c}" for c in CONTROLS]', "",
             (SPACE, "tests/test_osc.py::test_dump_has_every_value"), "a dump or a new subscriber never hears bypass and amount"),
    Mutation("insert-reaper-controls-misnumbered", "Dialect.from_dict",
             "P.NUM_PARAMS + len(P.MODULES) + 1)", "P.NUM_PARAMS + len(P.MODULES) + 2)",
             (SPACE,), "REAPER's bypass and amount are not its parameters 53 and 54"),
]
