"""The fast (stage 1) model: features, lexicon, calibration, the artifact and its training."""
