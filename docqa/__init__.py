"""docqa: local document question answering over your own files (English and Chinese) with ChatGLM."""

import logging as _logging

# sentence-transformers imports peft, which imports bitsandbytes, whose CPU backend warns on every start that it
# could not fetch an optional kernel from the Hugging Face hub (docqa never downloads at run time; its fallback
# kernel works): keep that one logger quiet so `docqa search` does not open with a false alarm.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
