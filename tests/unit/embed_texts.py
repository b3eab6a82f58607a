"""Texts every embedding path is checked on: near-duplicates, an unrelated one, empty and
blank, non-ASCII and emoji, an option list, and one over the model's length."""

TEXTS = [
    "How do I bake sourdough bread at home?",
    "What is a simple recipe for homemade sourdough?",
    "The central bank raised interest rates by half a point.",
    "",
    "   padded with spaces   ",
    "Résumé: naïve café ☕ — 東京 🚀",
    "Which of the following is a prime number? A) 21 B) 27 C) 29 D) 33",
    "routing " * 400,  # over-long: truncated to 254 word pieces plus [CLS] and [SEP]
]
