"""Text to music: zero-shot search over what the analysis measured (zero_shot), a text-to-audio projection
trained on the library (projection), and the recommender that picks between them and models' own text towers
(recommender)."""
