"""What the exporters accept, importable without torch or transformers (the CLI parser reads it)."""

FORMATS = ("hf", "ctranslate2")
# CTranslate2's weight types (ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES).
CT2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                     "bfloat16", "float32")
