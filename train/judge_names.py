"""The judges trained and measured offline by default (a leaf: the CLI reads it for help)."""

OFFLINE_JUDGES = ("memory_prior", "answer_format", "agreement", "verifier")
