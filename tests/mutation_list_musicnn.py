"""Mutations guarding the musicnn port, prompts and FAD_musicnn (tests/test_musicnn.py; format: tests/mutations.py)."""

from mutations import Mutation

T = "tests/test_musicnn.py"
GOLDEN = (f"{T}::test_tag_probabilities_and_embeddings_equal_the_originals",)
RESAMPLED = (f"{T}::test_tag_probabilities_and_embeddings_equal_the_originals",
             f"{T}::test_the_differentiable_float32_path_equals_the_original_and_has_gradients")

MUTATIONS = [
    # the mel front end: librosa's, rebuilt
    Mutation("musicnn-stft-zero-padding", "log_mel", 'pad_mode="reflect"', 'pad_mode="constant"', GOLDEN,
             "the STFT pads with zeros (librosa >= 0.9) instead of reflecting (the original's librosa)"),
    Mutation("musicnn-mel-not-area-normalised", "slaney_mel_filterbank",
             "weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]", "weights *= 0.03", GOLDEN,
             "the mel triangles lose Slaney's 2/width scaling"),
    Mutation("musicnn-mel-htk-scale", "_mel_to_hz", "f_sp * m)", "700.0 * np.expm1(m / 1127.0))", GOLDEN,
             "the mel bands below 1 kHz sit on HTK's scale, not Slaney's"),
    Mutation("musicnn-log-compression", "log_mel", "torch.log10(10000.0 * mel + 1.0)", "torch.log10(1000.0 * mel + 1.0)",
             GOLDEN, "log10(C·x + 1) with the wrong C"),
    Mutation("musicnn-symmetric-window", "log_mel", "periodic=True", "periodic=False", GOLDEN,
             "a symmetric Hann window instead of librosa's periodic one"),
    # the network
    Mutation("musicnn-pooling-not-interleaved", "Musicnn.forward",
             "torch.stack([features.amax(dim=2), features.mean(dim=2)], dim=2).flatten(1)",
             "torch.cat([features.amax(dim=2), features.mean(dim=2)], dim=1)", GOLDEN,
             "max and mean pooling concatenated instead of interleaved as TF flattens them"),
    Mutation("musicnn-no-residual", "Musicnn.forward", "h3 = self.midend[2](h2) + h2", "h3 = self.midend[2](h2)", GOLDEN,
             "the third mid-end layer loses its residual connection"),
    Mutation("musicnn-tf-same-padding-mirrored", "_same", "return ((k - 1) // 2, k - 1 - (k - 1) // 2)",
             "return (k - 1 - (k - 1) // 2, (k - 1) // 2)", GOLDEN,
             "'same' padding of the even temporal kernels puts the extra frame first (TF puts it last)"),
    Mutation("musicnn-bn-epsilon", "Musicnn.__init__", "self.pool_bn = nn.BatchNorm1d(pooled, eps=BN_EPSILON)",
             "self.pool_bn = nn.BatchNorm1d(pooled)", GOLDEN, "one batch norm with Torch's epsilon, not TF's"),
    # the resampler (44.1 kHz tracks)
    Mutation("musicnn-resampler-rolloff", "_kaiser_sinc_table", "_KAISER_ROLLOFF * np.sinc(_KAISER_ROLLOFF *",
             "_KAISER_ROLLOFF * np.sinc(0.99 *", RESAMPLED, "the resampler's cut-off is not resampy's"),
    Mutation("musicnn-resampler-wings-overlap", "_resample_kernel", "wing(p, scale - frac, n + 1, +1)",
             "wing(p, scale - frac, n, +1)", RESAMPLED, "the filter's right wing starts on the left wing's first input"),
    Mutation("musicnn-resampler-stereo-left-only", "to_musicnn_rate", "mono = audio.mean(1) if audio.dim() == 3 else audio",
             "mono = audio[:, 0] if audio.dim() == 3 else audio", RESAMPLED, "a stereo track is tagged by its left channel"),
    # prompts
    Mutation("prompt-tags-rejected", "parse_nudges", "found = [w] if w in NUDGES else resolve(w)",
             "found = [w] if w in NUDGES else []", (f"{T}::test_prompt_words_parse_next_to_the_nudge_words",),
             "a tag of the vocabularies is refused as a nudge word"),
    Mutation("prompt-music-suffix-kept", "resolve", 'for candidate in (w, re.sub(r" music$", "", w)):',
             "for candidate in (w,):", (f"{T}::test_prompt_words_parse_next_to_the_nudge_words",),
             'the paper\'s "Hip-Hop Music" is not understood'),
    Mutation("prompt-synonyms-ignored", "resolve", "if candidate in SYNONYMS:", "if False:",
             (f"{T}::test_prompt_words_parse_next_to_the_nudge_words",), '"rap" and "edm" are unknown words'),
    Mutation("prompt-preferred-tagger-ignored", "vocabulary", "key=lambda m: m == PREFERRED_TAGGER",
             "key=lambda m: m != PREFERRED_TAGGER",
             (f"{T}::test_prompt_words_parse_next_to_the_nudge_words",), "a tag both taggers know is read from MTT"),
    Mutation("prompt-error-without-vocabulary", "parse_nudges", "; {describe_vocabulary()}", "",
             (f"{T}::test_an_unknown_word_is_one_line_listing_the_vocabulary",),
             "an unknown word's error does not list the tags"),
    Mutation("prompt-objective-ignores-tags", "nudge_objective",
             "return total + PROMPT_WEIGHT * prompt_loss(y, tags) if tags else total", "return total",
             (f"{T}::test_the_prompt_objective_is_the_taggers_loss_plus_the_anchor",
              f"{T}::test_prompt_ito_raises_the_probability_of_the_prompted_tag"),
             "the prompt's tags never reach the ITO objective"),
    Mutation("prompt-no-anchor", "nudge_objective", "total = loss(join_excerpts(y), ref_features=targets)[0]",
             "total = 0.0 * loss(join_excerpts(y), ref_features=targets)[0]",
             (f"{T}::test_the_prompt_objective_is_the_taggers_loss_plus_the_anchor",),
             "nothing keeps the prompted master near the one before"),
    Mutation("prompt-loss-lowers-the-tag", "prompt_loss", "F.softplus(-logits[m][:, i])", "F.softplus(logits[m][:, i])",
             (f"{T}::test_prompt_ito_raises_the_probability_of_the_prompted_tag",),
             "ITO pushes the tag's probability down"),
    Mutation("prompt-cli-drops-prompt", "nudge_words", "(args.nudge, args.prompt)", "(args.nudge,)",
             (f"{T}::test_master_refuses_an_unknown_prompt_before_any_work",), "master --prompt is ignored",
             module="bridge/cli/master.py"),
]
