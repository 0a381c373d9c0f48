"""The fast model's labelled dataset, one concern per module (callers import from the defining one).

`sources` (the pinned archives and the project's posts), `records` (the rules every text goes
through), `labels` (each source's labels mapped to the taxonomy), `readers` (per-source readers),
`download` (fetching and verifying the archives) and `build` (split, manifest, the cached build).
"""
