"""Full-size critics: a Qwen2.5-VL-class GGUF + mmproj run by llama.cpp through the think-with-images loop.

The model sees the whole photo (the glance), and each turn it writes is decoded under a GBNF grammar
(``qds_lite.vlm_protocol``), so even a weak or random model can only produce a well-formed zoom request
or a verdict. A zoom is answered with that region cropped from the *full-resolution* image, appended to
the same KV cache as a new user turn with the image (nothing is re-encoded). After the zoom budget the
grammar no longer offers ``<zoom>``. The answer's leading digit gives a Q-Align level distribution from
the model's logits at that position; the result is the same :class:`qds_lite.result.Result` and trace
as the small critic's.

Uses llama-cpp-python's low-level API and libmtmd (the library behind its ``Qwen25VLChatHandler``):
that handler clears the KV cache and re-encodes every image on each call, which a tool loop cannot
afford on a 7B model. Prompts are Qwen's ChatML; a model whose chat template is not ChatML is refused.

    critic = VLMCritic("build/vlm/my-critic", max_zooms=3)
    result = critic.score("photo.jpg")
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import protocol as P
from . import vlm_protocol as V
from .backends.gguf_backend import _import_llama_cpp, model_params
from .errors import ModelError
from .io import LoadedImage, Source, load_image
from .model_store import MANIFEST_VERSION, sha256_file
from .result import Finding, Result, rationale

_quiet_mtmd_log = None  # kept referenced while libmtmd may call it


@dataclass(frozen=True)
class VLMFiles:
    """A converted VLM critic (``export/vlm_convert.py``): its manifest and the two files one run needs."""

    name: str
    root: Path
    manifest: dict
    llm: Path
    mmproj: Path
    quant: str

    @property
    def sha256(self) -> str:
        return sha256_file(self.root / "manifest.json")


def resolve_vlm(model: str | os.PathLike, quant: str | None = None, verify: bool = True) -> VLMFiles:
    """A folder with a VLM manifest -> its language model (``quant``, default the manifest's
    ``default_quant``) and mmproj, sha256-checked against the manifest when ``verify``."""
    root = Path(model)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{root}: no readable manifest.json ({e})",
                         hint="convert a checkpoint with `python -m export.vlm_convert HF_DIR --out DIR`") from e
    name = manifest.get("name", root.name)
    if manifest.get("manifest_version") != MANIFEST_VERSION or manifest.get("kind") != "vlm":
        raise ModelError(f"{name}: not a version-{MANIFEST_VERSION} VLM manifest", hint="re-run export.vlm_convert")
    if manifest.get("protocol_version") != V.PROTOCOL_VERSION:
        raise ModelError(f"{name}: prompt protocol {manifest.get('protocol_version')} is not {V.PROTOCOL_VERSION}",
                         hint="re-run export.vlm_convert or update qds-lite")
    quant = quant or manifest["default_quant"]
    llms = {f["quant"]: f for f in manifest["files"] if f["role"] == "llm"}
    if quant not in llms:
        raise ModelError(f"{name}: no {quant} language model (has {', '.join(llms)})")
    mmproj = next(f for f in manifest["files"] if f["role"] == "mmproj")
    for entry in (llms[quant], mmproj):
        path = root / entry["path"]
        if not path.is_file():
            raise ModelError(f"{name}: missing file {entry['path']}", hint="re-run export.vlm_convert or re-pull")
        if path.stat().st_size != entry["size"] or (verify and sha256_file(path) != entry["sha256"]):
            raise ModelError(f"{name}: {entry['path']} does not match its sha256 in manifest.json",
                             hint="the file is corrupt or was replaced; re-pull or re-convert it")
    return VLMFiles(name, root.resolve(), manifest, root / llms[quant]["path"], root / mmproj["path"], quant)


@dataclass(frozen=True)
class ZoomCall:
    box: V.Box  # as the model wrote it (thousandths)
    window: tuple[int, int, int, int]  # native pixels cropped from the full-resolution image
    sent_size: tuple[int, int]  # (w, h) of the image handed to the model (window, downscaled if over zoom_max_side)
    n_image_tokens: int


@dataclass(frozen=True)
class VLMRun:
    """Everything one scoring run produced: the Result, the raw turns and what each zoom looked at."""

    result: Result
    turns: tuple[str, ...]
    zooms: tuple[ZoomCall, ...]
    glance_size: tuple[int, int]
    answer: float
    logprobs_used: bool


class VLMCritic:
    """A VLM critic on llama.cpp: one model, one context, one image at a time."""

    backend = "gguf"

    def __init__(self, model: str | os.PathLike, *, quant: str | None = None, n_gpu_layers: int | None = None,
                 n_ctx: int = 8192, n_threads: int | None = None, max_zooms: int = 3, min_zooms: int = 0,
                 glance_side: int = 896, zoom_max_side: int = 896, think_chars: int = 600,
                 temperature: float = 0.0, seed: int = 0, image_max_tokens: int | None = None,
                 verify: bool = True, verbose: bool = False) -> None:
        if not 0 <= min_zooms <= max_zooms:
            raise ValueError(f"need 0 <= min_zooms <= max_zooms, got {min_zooms}, {max_zooms}")
        self.files = resolve_vlm(model, quant, verify)
        self.max_zooms, self.min_zooms = max_zooms, min_zooms
        self.glance_side, self.zoom_max_side, self.think_chars = glance_side, zoom_max_side, think_chars
        self.temperature, self.seed = temperature, seed
        template = self.files.manifest.get("chat_template") or ""
        if "<|im_start|>" not in template:
            raise ModelError(f"{self.files.name}: chat template is not ChatML; only Qwen-VL-style models are supported")
        self._ll = ll = _import_llama_cpp(verbose)
        import llama_cpp.mtmd_cpp as mtmd

        self._mtmd = mtmd
        self._quiet_mtmd(verbose)
        self._model = self._ctx = self._mctx = self._batch = None
        if n_gpu_layers is None:  # all layers where this build can offload, else none
            n_gpu_layers = -1 if ll.llama_supports_gpu_offload() else 0
        threads = n_threads or max(1, min(8, os.cpu_count() or 1))
        mparams = model_params(ll, n_gpu_layers)
        self._model = ll.llama_model_load_from_file(os.fsencode(self.files.llm), mparams)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.files.llm}", hint="pass verbose=True to see why")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch = n_ctx, min(n_ctx, 2048)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise ModelError(f"llama.cpp could not create a {n_ctx}-token context for {self.files.llm}")
        self.n_ctx, self.n_batch = n_ctx, cparams.n_batch
        p = mtmd.mtmd_context_params_default()
        p.use_gpu, p.n_threads, p.print_timings, p.warmup = n_gpu_layers != 0, threads, verbose, False
        if image_max_tokens:
            p.image_max_tokens = image_max_tokens
        self._mctx = mtmd.mtmd_init_from_file(os.fsencode(self.files.mmproj), self._model, p)
        if not self._mctx or not mtmd.mtmd_support_vision(self._mctx):
            self.close()
            raise ModelError(f"libmtmd could not load the vision projector {self.files.mmproj} with this model",
                             hint="the mmproj must come from the same checkpoint as the language model")
        self._marker = mtmd.mtmd_default_marker().decode()
        self._batch = ll.llama_batch_init(1, 0, 1)
        self._digits = [self._digit_token(d) for d in range(1, 6)]

    # --- public -----------------------------------------------------------------------------------
    @property
    def model_info(self) -> dict:
        return {"name": self.files.name, "sha256": self.files.sha256, "quant": self.files.quant,
                "protocol_version": V.PROTOCOL_VERSION}

    def score(self, source: Source | LoadedImage) -> Result:
        return self.run(source).result

    def run(self, source: Source | LoadedImage) -> VLMRun:
        """Score one image, keeping the raw turns and zoom calls (for tests and distillation)."""
        t0 = time.perf_counter()
        img = source if isinstance(source, LoadedImage) else load_image(source)
        t_decode = time.perf_counter() - t0
        self._model_s = 0.0
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self._ctx), True)
        self._n_past = 0
        w, h = img.original_size
        glance = img.thumbnail(self.glance_side)
        text = (f"<|im_start|>system\n{V.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{self._marker}"
                f"The photo: {w} x {h} pixels (shown at {glance.width} x {glance.height}). "
                f"You may zoom up to {self.max_zooms} times.<|im_end|>\n<|im_start|>assistant\n")
        self._feed(text, [np.asarray(glance)], first=True)
        turns: list[str] = []
        zooms: list[ZoomCall] = []
        while True:
            allow_zoom = len(zooms) < self.max_zooms
            gbnf = V.grammar(allow_zoom=allow_zoom, allow_verdict=len(zooms) >= self.min_zooms,
                             think_chars=self.think_chars)
            raw, answer_logits = self._generate(gbnf, self.seed + len(turns))
            turns.append(raw)
            turn = V.parse_turn(raw)
            if turn.zoom is None:
                break
            window = V.box_window(turn.zoom, (w, h))
            crop = _crop(img, window, self.zoom_max_side)
            x0, y0, x1, y1 = window
            left = self.max_zooms - len(zooms) - 1
            n_tok = self._feed(
                f"<|im_end|>\n<|im_start|>user\n{self._marker}Zoom {len(zooms) + 1}: pixels {x0},{y0} to {x1},{y1} "
                f"of the photo ({x1 - x0} x {y1 - y0} native pixels). {left} zoom{'s' if left != 1 else ''} left."
                "<|im_end|>\n<|im_start|>assistant\n", [crop])
            zooms.append(ZoomCall(turn.zoom, window, (crop.shape[1], crop.shape[0]), n_tok))
        probs = V.level_probs(answer_logits, turn.answer)
        result = self._result(img, glance.size, turns, turn, zooms, probs, t_decode, time.perf_counter() - t0)
        return VLMRun(result, tuple(turns), tuple(zooms), glance.size, turn.answer, answer_logits is not None)

    def close(self) -> None:
        """Free the projector, context and model (also done on garbage collection)."""
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        if getattr(self, "_mctx", None):
            self._mtmd.mtmd_free(self._mctx)
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)
        self._mctx = self._batch = self._ctx = self._model = None

    def __enter__(self) -> VLMCritic:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------
    def _quiet_mtmd(self, verbose: bool) -> None:
        global _quiet_mtmd_log
        if not verbose:
            if _quiet_mtmd_log is None:
                _quiet_mtmd_log = self._ll.llama_log_callback(lambda level, text, user_data: None)
            self._mtmd.mtmd_helper_log_set(_quiet_mtmd_log, ctypes.c_void_p(0))

    def _digit_token(self, d: int) -> int | None:
        """The token the answer's leading digit ``d`` is written with after "<answer>", if it is one token."""
        ll, text = self._ll, f"<answer>{d}".encode()
        toks, buf = (ll.llama_token * 32)(), ctypes.create_string_buffer(32)
        n = ll.llama_tokenize(self._vocab, text, len(text), toks, 32, False, False)
        if n <= 0:
            return None
        m = ll.llama_token_to_piece(self._vocab, toks[n - 1], buf, len(buf), 0, False)
        return toks[n - 1] if buf.raw[:m] == str(d).encode() else None

    def _feed(self, text: str, images: list[np.ndarray], first: bool = False) -> int:
        """Tokenize text with one marker per image, evaluate it at the end of the sequence; image tokens fed."""
        mtmd, ll = self._mtmd, self._ll
        t0 = time.perf_counter()
        bitmaps = [mtmd.mtmd_bitmap_init(a.shape[1], a.shape[0], a.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
                   for a in (np.ascontiguousarray(i, dtype=np.uint8) for i in images)]
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            data = text.encode()
            inp = mtmd.mtmd_input_text()
            inp.text, inp.text_len, inp.add_special, inp.parse_special = data, len(data), first, True
            arr = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if mtmd.mtmd_tokenize(self._mctx, chunks, ctypes.byref(inp), arr, len(bitmaps)) != 0:
                raise RuntimeError("libmtmd could not tokenize the prompt")
            n_image = sum(mtmd.mtmd_input_chunk_get_n_tokens(mtmd.mtmd_input_chunks_get(chunks, i))
                          for i in range(mtmd.mtmd_input_chunks_size(chunks))
                          if mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i))
                          == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE)
            n_pos = mtmd.mtmd_helper_get_n_pos(chunks)
            if self._n_past + n_pos + self.think_chars + 64 > self.n_ctx:
                raise ModelError(f"the conversation would reach {self._n_past + n_pos} positions; context holds "
                                 f"{self.n_ctx}", hint="raise n_ctx, or lower glance_side / zoom_max_side")
            new_past = ll.llama_pos(0)
            rc = mtmd.mtmd_helper_eval_chunks(self._mctx, self._ctx, chunks, self._n_past, 0, self.n_batch, True,
                                              ctypes.byref(new_past))
            if rc != 0:
                raise RuntimeError(f"llama.cpp failed to evaluate the prompt (code {rc})")
            self._n_past = new_past.value
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for b in bitmaps:
                mtmd.mtmd_bitmap_free(b)
        self._model_s += time.perf_counter() - t0
        return n_image

    def _generate(self, gbnf: str, seed: int) -> tuple[str, list[float] | None]:
        """Decode one assistant turn under the grammar; returns its text and, when the answer's leading digit
        is a single token, the raw logits of the tokens '1'..'5' at that position."""
        ll, b = self._ll, self._batch
        t0 = time.perf_counter()
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        grammar = ll.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not grammar:
            ll.llama_sampler_free(chain)
            raise RuntimeError("llama.cpp rejected the protocol grammar")
        ll.llama_sampler_chain_add(chain, grammar)
        if self.temperature > 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(self.temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        else:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        pieces: list[bytes] = []
        tail = b""  # the last decoded bytes: enough to see the text end in </zoom>, </answer> or <answer>
        digit_logits, at_answer = None, None
        buf = ctypes.create_string_buffer(256)
        try:
            for _ in range(self.think_chars + 400):  # the grammar bounds a turn far below this
                if tail.endswith((b"</zoom>", b"</answer>")):
                    break
                if tail.endswith(b"<answer>") and None not in self._digits:
                    row = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
                    at_answer, digit_logits = len(pieces), [float(row[t]) for t in self._digits]
                tok = ll.llama_sampler_sample(chain, self._ctx, -1)
                if ll.llama_vocab_is_eog(self._vocab, tok):
                    raise RuntimeError("the model ended its turn before the grammar was complete")
                n = ll.llama_token_to_piece(self._vocab, tok, buf, len(buf), 0, False)
                pieces.append(buf.raw[:n])
                tail = (tail + pieces[-1])[-16:]
                b.token[0], b.pos[0], b.n_seq_id[0], b.seq_id[0][0], b.logits[0] = tok, self._n_past, 1, 0, 1
                b.n_tokens = 1
                if self._n_past + 1 >= self.n_ctx:
                    raise ModelError(f"the conversation filled the {self.n_ctx}-token context", hint="raise n_ctx")
                if ll.llama_decode(self._ctx, b) != 0:
                    raise RuntimeError("llama_decode failed")
                self._n_past += 1
            else:
                raise RuntimeError("a turn did not finish within its token bound")
        finally:
            ll.llama_sampler_free(chain)
            self._model_s += time.perf_counter() - t0
        # the leading digit must have come as a token of its own for its logits to be the level's
        if at_answer is not None and not (at_answer < len(pieces) and pieces[at_answer] in _DIGIT_PIECES):
            digit_logits = None
        return b"".join(pieces).decode("utf-8", errors="replace"), digit_logits

    def _result(self, img: LoadedImage, glance_size: tuple[int, int], turns: list[str], final: V.Turn,
                zooms: list[ZoomCall], probs: tuple[float, ...], t_decode: float, t_total: float) -> Result:
        w, h = img.original_size
        zoom_boxes = [V.box_fractions(z.box) for z in zooms]
        findings = []
        for ftype, severity, box in final.findings:
            frac = V.box_fractions(box)
            cx, cy = (frac[0] + frac[2]) / 2, (frac[1] + frac[3]) / 2
            evidence = next((i + 1 for i, zb in enumerate(zoom_boxes)
                             if zb[0] <= cx <= zb[2] and zb[1] <= cy <= zb[3]), None)
            findings.append(Finding(ftype, min(1.0, severity), frac, evidence))
        score = V.score_of(final.answer, probs)
        level = P.level_of(score)
        steps = [{"tool": "glance", "size": list(glance_size), "native_px": [w, h]}]
        for z in zooms:
            x0, y0, x1, y1 = z.window
            steps.append({"tool": "zoom", "box": [x0 / w, y0 / h, x1 / w, y1 / h], "native_px": [x1 - x0, y1 - y0],
                          "window": list(z.window)})
        found = tuple(findings)
        text = rationale(found, level)
        think = " ".join(final.think.split())
        if think:
            text = f"{text} Model: {think[:400]}"
        timings = {"decode": img.load_ms, "model": self._model_s * 1e3,
                   "loop": max(0.0, (t_total - t_decode - self._model_s) * 1e3)}
        return Result(file=img.name, score=score, level=level, level_probs=probs, findings=found,
                      steps=tuple(steps), rationale=text, model=self.model_info, backend=self.backend,
                      timings_ms=timings)


_DIGIT_PIECES = {str(d).encode() for d in range(1, 6)}


def _crop(img: LoadedImage, window: tuple[int, int, int, int], max_side: int) -> np.ndarray:
    """The window of the full-resolution image, downscaled (aspect kept) only if its long side exceeds max_side."""
    x0, y0, x1, y1 = window
    full = img.full
    crop = full.crop(window) if isinstance(full, Image.Image) else Image.fromarray(full[y0:y1, x0:x1])
    s = max_side / max(crop.size)
    if s < 1:
        crop = crop.resize((max(1, round(crop.width * s)), max(1, round(crop.height * s))), Image.BICUBIC)
    return np.asarray(crop, dtype=np.uint8)
