"""`docqa finetune`: adapt a local ChatGLM to the user's own question/answer data.

    result = finetune("faq.jsonl", "~/models/chatglm2-6b", "runs/faq", FinetuneConfig(method="ptuning"))  # doctest: +SKIP

| module | job |
| --- | --- |
| `data.py` | the record formats (ADGEN, official multi-turn, alpaca, sharegpt) -> token ids with answer-only labels |
| `train.py` | the training loop: progress events, checkpoints, resume, before/after losses, adapter.json |
| `lora.py` | LoRA / QLoRA (NF4 via bitsandbytes) on the native GlmForCausalLM, with peft |
| `ptuning.py` | P-Tuning v2: upstream ChatGLM2's PrefixEncoder, prefixes in the multi-query layout |
| `merge.py` | `docqa finetune merge`: a LoRA adapter folded into a full checkpoint in the official layout |

Using an adapter at inference is docqa.generate.adapters' job (layer 2: the generator never imports this
package). Limits: P-Tuning and QLoRA on ChatGLM2/ChatGLM3 networks only; ChatGLM-6B (v1) takes LoRA.
"""

from docqa.finetune.train import FinetuneConfig, FinetuneResult, TrainEvent, defaults, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "TrainEvent", "defaults", "finetune"]
