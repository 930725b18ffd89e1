"""Models people can use elsewhere: a run's checkpoint as a Hugging Face or CTranslate2 model."""
