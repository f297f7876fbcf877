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
]
