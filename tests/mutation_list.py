"""The mutations that ``tests/mutations.py`` applies, one at a time (see its docstring).

Each names the behaviour it breaks (``why``) and the tests that must notice. Add one for every
new behaviour (tests/README.md). ``quick=True`` marks the subset of ``--quick``.
"""

from mutations import Mutation

ITO = "tests/test_ito_master.py"

MUTATIONS = [
    # ---------------------------------------------------------------- mastering and ITO
    Mutation("master-discards-ito-result", "_Job.ito",
             "self.theta_ito = self.theta\n", "self.theta = self.theta_ito = self.theta0\n",
             (f"{ITO}::test_master_renders_the_ito_result",),
             "master() renders the Θ from before ITO", quick=True),
    Mutation("ito-returns-last-step", "_descend",
             "return losses, best_v, best_theta, first_theta, best_step, step",
             "return losses, variable.detach().clone(), theta.detach().clone(), first_theta, best_step, step",
             (f"{ITO}::test_ito_keeps_the_best_step_and_stops_with_patience",),
             "ITO returns its last step instead of its best", quick=True),
    Mutation("ito-patience-disabled", "_descend",
             "if since_best >= patience:", "if False:",
             (f"{ITO}::test_ito_keeps_the_best_step_and_stops_with_patience",),
             "ITO runs every step however long the loss rises"),
    Mutation("ito-zero-learning-rate", "_descend",
             "torch.optim.RAdam([variable], lr=lr)", "torch.optim.RAdam([variable], lr=0.0)",
             (f"{ITO}::test_ito_keeps_the_best_step_and_stops_with_patience",),
             "ITO never moves"),
    Mutation("master-skips-matches", "_Job.match",
             "if not (self.white and s.match_loudness and self.level_ref is not None):", "if True:",
             (f"{ITO}::test_master_matches_the_reference_loudness_and_dynamics",),
             "master skips the loudness and dynamics matches", quick=True),
    Mutation("loudness-match-identity", "match_loudness",
             "for _ in range(max_corrections):", "for _ in range(0):",
             ("tests/test_mastering.py::test_loudness_match_reaches_the_target_through_the_limiter",),
             "the loudness match leaves the gain where it was"),
    Mutation("cli-saves-pre-ito-theta", "_save_preset",
             "preset = Preset.new(name, result.chain,", "preset = Preset.new(name, result.chain_before_ito,",
             (f"{ITO}::test_master_cli_writes_master_preset_plot_json",),
             "the preset stores Θ from before ITO and the matches", quick=True),
    # ---------------------------------------------------------------- chain, analysis, f_norm, I/O
    Mutation("limiter-skipped", "_run_module",
             'return limiter(x, _col(params, "limiter.threshold")', 'return x if True else limiter(x, _col(params, "limiter.threshold")',
             ("tests/test_chain.py::test_limiter_lowers_peak",),
             "the limiter does nothing"),
    Mutation("analyze-levels-6db-low", "analyze",
             "    x = torch.as_tensor(np.asarray(audio, dtype=np.float64)).unsqueeze(0)",
             "    audio = np.asarray(audio) * 0.5\n    x = torch.as_tensor(np.asarray(audio, dtype=np.float64)).unsqueeze(0)",
             ("tests/test_cli.py::test_analyze_measures_a_known_signal",),
             "analyze reports every level 6 dB low", quick=True),
    Mutation("fxnorm-no-eq", "fx_normalize",
             'x = _eq_to_shape(x, np.asarray(stats["spectrum_shape_db"]), sample_rate)', "pass",
             ("tests/test_manipulation_fxnorm_synth.py::test_fxnorm_removes_an_eq_difference",),
             "f_norm no longer normalises the spectral shape", quick=True),
    Mutation("fxnorm-no-width", "fx_normalize",
             "g = min(max(g, SIDE_GAIN_LIMITS[0]), SIDE_GAIN_LIMITS[1])", "g = 1.0",
             ("tests/test_manipulation_fxnorm_synth.py::test_fxnorm_reaches_target_loudness_and_moves_width",),
             "f_norm no longer normalises the stereo width"),
    Mutation("atomic-write-in-place", "atomic_path",
             "os.close(fd)\n", "os.close(fd)\n    tmp = str(target)\n",
             ("tests/test_audio_io.py::test_write_audio_never_leaves_a_half_written_file",
              "tests/test_presets.py::test_kill_9_during_save_leaves_previous_version"),
             "the one atomic write writes over its target: a failed or killed write leaves half a file", quick=True),
    # ---------------------------------------------------------------- export and render
    Mutation("render-preset-ignored", "chain_source",
             ".get(preset).chain", ".get(preset) and P.ChainParams.default()",
             ("tests/test_export_render.py::test_render_with_a_preset",),
             "render --preset renders the neutral chain", quick=True),
    Mutation("pedalboard-ignores-calibration", "PedalboardStreamingChain.__init__",
             "self._calibration = dict(settings.calibration) if settings is not None else {}", "self._calibration = {}",
             ("tests/test_export_render.py::test_export_pedalboard_then_render",),
             "the pedalboard render ignores its calibration file"),
    Mutation("onnx-limiter-threshold-off", "_coefficients",
             'c["limiter.threshold"] = db_to_gain(param("limiter.threshold"))',
             'c["limiter.threshold"] = db_to_gain(g.op("Add", param("limiter.threshold"), g.const(F32(0.1))))',
             ("tests/test_export_onnx.py::test_stream_equals_torch_render_synth",),
             "the ONNX limiter threshold is 0.1 dB off"),
    # ---------------------------------------------------------------- OSC, presets, live engine
    Mutation("osc-no-clamping", "BridgeState.set_value",
             "applied = spec.clamp(v)", "applied = v",
             ("tests/test_osc.py::test_clamp_warns_and_applies_the_limit",),
             "out-of-range OSC values are applied as they are"),
    Mutation("osc-no-error-replies", "reply_error",
             "self._reply(sender, A.ERROR, [printable(address), printable(reason, 500)])", "pass",
             ("tests/test_osc.py::test_errors_change_nothing",),
             "refused OSC messages get no error reply"),
    Mutation("preset-save-bypasses-atomic-write", "PresetStore.save",
             "atomic_write_text(path, preset.to_json())", "path.write_text(preset.to_json())",
             ("tests/test_presets.py::test_kill_9_during_save_leaves_previous_version",
              "tests/test_presets.py::test_1000_concurrent_saves_from_two_processes"),
             "a preset is written in place: a crash leaves it half-written"),
    Mutation("write-audio-bypasses-atomic-write", "write_audio",
             "with atomic_path(p, suffix=ext) as tmp:", "for tmp in (p,):",
             ("tests/test_audio_io.py::test_write_audio_never_leaves_a_half_written_file",),
             "write_audio writes over the target"),
    # ---------------------------------------------------------------- corpus and architecture
    Mutation("corpus-variants-are-separate-songs", "song_id",
             'base = _VARIANT.sub("", stem) or stem', "base = stem",
             ("tests/test_corpus.py",),
             "a song's loop or intro lands in another split than the song: test music leaks into training"),
    Mutation("engine-imports-bridge", "render_chain",
             '    if audio.dim() != 3 or audio.shape[1] != 2:',
             '    from bridge.osc.wire import printable  # noqa: F401\n    if audio.dim() != 3 or audio.shape[1] != 2:',
             ("tests/test_architecture.py::test_dependencies_point_one_way",),
             "engine/ imports from bridge/: the layers no longer point one way"),
    Mutation("eval-synthetic-short-songs-traceback", "eval_synthetic",
             "    if short:\n", "    if False:\n",
             ("tests/test_eval_commands.py::test_eval_synthetic_on_too_short_held_out_songs_is_one_line",),
             "held-out songs too short for an example end eval-synthetic in a traceback"),
    Mutation("live-no-crossfade", "render_block",
             "y = y_old * (1.0 - self.ramp) + y_new * self.ramp", "y = y_new",
             ("tests/test_live.py::test_gain_change_ramps_across_one_block",),
             "a parameter change in the live engine jumps instead of crossfading"),
]

try:  # mutations for behaviours tested in tests/test_cli_models.py and friends
    from mutation_list_paths import MUTATIONS as _PATHS

    MUTATIONS += _PATHS
except ImportError:
    pass
