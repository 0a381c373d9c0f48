"""The fast (stage 1) model, one concern per module; callers import from the defining module.

`config` (the configuration and its fingerprint), `lexicon` (the always-review signals),
`features` (hashed n-grams, the semantic head's inputs), `calibration` (Platt scaling, the prior
shift), `model` (`FastModel` and its artifact), `training` (`train_fast_model`) and `store`
(`ensure_fast_model`: the artifact a process serves, trained on first use). Each imports only
those listed before it.
"""
