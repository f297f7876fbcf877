"""Mutations guarding the tonal-balance match (tests/test_tonal.py; see tests/mutations.py)."""

from mutations import Mutation

TONAL = "tests/test_tonal.py"

MUTATIONS = [
    Mutation("tonal-fit-never-steps", "_fit_balance", "        opt.step()\n", "        pass\n",
             (f"{TONAL}::test_the_fit_undoes_a_known_eq_difference",),
             "the EQ fit computes its loss but never moves the parameters"),
    Mutation("tonal-no-width-term", "_objective", "return fit + width_weight * (width_db - ref.width_db).square()",
             "return fit + 0.0 * (width_db - ref.width_db).square()",
             (f"{TONAL}::test_the_width_holds_when_the_reference_side_is_brighter_than_its_mid",),
             "the fit matches the spectra only, and widens a master whose reference has a brighter side"),
    Mutation("tonal-imager-not-modelled", "_imager_power", "return torch.stack([(2 * (1 - w)) ** 2, (2 * w) ** 2]).unsqueeze(1)",
             "return torch.ones(2, 1, dtype=w.dtype) + 0 * w",
             (f"{TONAL}::test_the_imager_restores_a_known_width_difference",),
             "the fit's model of the render ignores the imager, so the width never moves"),
    Mutation("tonal-no-gain-compensation", "match_tonal_balance",
             "th[_GAIN] = spec.clamp(float(th[_GAIN]) + level - lufs)", "pass",
             (f"{TONAL}::test_the_fit_keeps_the_loudness_it_was_given",),
             "the EQ's loudness change is not compensated, so the limiter works harder than in the master"),
    Mutation("tonal-keeps-a-worse-round", "match_tonal_balance", "        if d < best[0]:\n", "        if True:\n",
             (f"{TONAL}::test_a_reference_with_the_same_balance_changes_next_to_nothing",),
             "a round that made the balance worse replaces the better one"),
    Mutation("tonal-off-in-master", "_Job.match", "        if s.match_tonal:\n", "        if False:\n",
             (f"{TONAL}::test_master_fits_the_balance_by_default",),
             "the master skips the tonal-balance match"),
]
