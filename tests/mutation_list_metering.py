"""Mutations guarding pinned parameters and the gain-reduction meter (tests/test_metering.py)."""

from mutations import Mutation

METER = "tests/test_metering.py"

MUTATIONS = [
    Mutation("meter-ignores-parallel-mix", "_gains", "out[f\"multiband.{name}\"] = (1.0 - mix) + mix * g",
             "out[f\"multiband.{name}\"] = g",
             (f"{METER}::test_compressor_reduction_per_band_and_through_the_parallel_mix",),
             "the band's reduction ignores the dry share of the parallel multiband stage"),
    Mutation("meter-limiter-sees-the-raw-input", "_gains",
             "before = on & (torch.arange(len(P.MODULES)) < P.MODULES.index(\"limiter\"))",
             "before = torch.zeros(len(P.MODULES), dtype=torch.bool)",
             (f"{METER}::test_limiter_reduction_follows_its_threshold",),
             "the limiter's reduction is measured on the chain's input, not on what reaches the limiter"),
    Mutation("pinned-misses-the-top", "ParamSpec.at_limit", "n >= 1.0 - LIMIT_TOLERANCE", "n > 1.0",
             (f"{METER}::test_pinned_marks_range_ends_that_are_not_neutral",),
             "a make-up gain at +24 dB is not marked as pinned"),
    Mutation("pinned-counts-neutral-defaults", "ParamSpec.at_limit",
             "if at and abs(self.to_normalized(self.default) - (0.0 if end == \"min\" else 1.0)) > LIMIT_TOLERANCE:",
             "if at:",
             (f"{METER}::test_pinned_marks_range_ends_that_are_not_neutral",),
             "a compressor at ratio 1 (off) is reported as pinned"),
    Mutation("table-no-limit-mark", "params_change_table",
             'mark = f"  at {pinned[p.key]}" if p.key in pinned else ""', 'mark = ""',
             (f"{METER}::test_the_table_marks_pinned_parameters_and_shows_gain_reduction",),
             "the Θ table does not mark a parameter at its limit"),
]
MUTATIONS += [
    Mutation("eval-pinned-not-recorded", "run_system", 'info["pinned"] = sorted(P.pinned(result.chain.values))', "pass",
             ("tests/test_eval_commands.py::test_eval_scores_are_the_measures_of_each_pair_and_the_table_holds_their_medians",),
             "eval does not record which parameters a master left at a range limit"),
]
