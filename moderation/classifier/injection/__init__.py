"""Prompt injection: the regex screen (`screen`, reading text through `normalise` and `encoded`,
its rules in `rule_tables/` loaded by `rules`), the learned detector (`model`) and its corpus."""
