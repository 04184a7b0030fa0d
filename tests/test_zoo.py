"""The MONAI model-zoo CI's checks on bundle/, offline, and the model card's commands run from the bundle root.

What the zoo checks (its ci/verify_bundle.py and pre-commit hooks): the bundle's files, `version` in `changelog`,
`verify_metadata` against the metadata schema, `pretty-format-json --autofix --no-sort-keys --indent=4`,
`verify_net_in_out` on `network_def` of configs/inference.yaml, MONAI's inference property check and
`ckpt_export`. Added here: the pinned versions are the installed ones, each generator's data format, and the model
card's train -> verify_net_in_out -> ckpt_export commands on a checkpoint that the bundle's own training wrote.
(The train workflow's property check lives in test_bundle.py.)
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO, TINY_OVERRIDES
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from ctmri_monai.networks.loading import load_generator

BUNDLE = REPO / "bundle"
META_FILE = CONFIGS / "metadata.json"
CARD = BUNDLE / "docs" / "README.md"
# The schema the metadata's "schema" URL names, kept beside the repository because CI machines cannot download.
SCHEMA = Path(__file__).resolve().parents[2] / "shared" / "reference" / "monai_bundle_meta_schema_20240725.json"
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
DIRECTIONS = ("ct2mri", "mri2ct")
CARD_SECTIONS = ("Model overview", "Data", "Data and the model's contract", "Training configuration",
                 "Input and output", "MONAI bundle commands", "Performance", "System configuration", "Limitations",
                 "Weights", "Security", "Citation", "License")


def _meta() -> dict:
    return json.loads(META_FILE.read_text(encoding="utf-8"))


def _card_commands(*prefix: str) -> list[list[str]]:
    """The model card's shell commands (its bash blocks, continuation lines joined, comments dropped) that start
    with ``prefix``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", CARD.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:len(prefix)] == list(prefix):
                commands.append(argv)
    return commands


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(f"--{name}") + 1]


def _options(argv: list[str]) -> dict[str, str]:
    return {a[2:]: argv[i + 1] for i, a in enumerate(argv) if a.startswith("--")}


def _files(value: str) -> list[str]:
    """A ``--config_file`` value: one path or a Python list of paths."""
    return ast.literal_eval(value) if value.startswith("[") else [value]


def _run_python(argv: list[str], cwd: Path, *extra: str) -> None:
    """Run a card command (``python ...``) with this interpreter, one thread, in ``cwd``."""
    assert argv[0] == "python", argv
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, *argv[1:], *extra], cwd=cwd, env=env, capture_output=True, text=True,
                            encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, f"{' '.join(argv)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


# ----------------------------------------------------------------------------------------- layout and metadata
def test_bundle_has_the_zoo_layout() -> None:
    for name in ("configs/metadata.json", "configs/inference.yaml", "configs/logging.conf", "docs/README.md",
                 "LICENSE"):
        assert (BUNDLE / name).is_file(), name
    meta = _meta()
    assert meta["version"] in meta["changelog"]
    # the zoo's pre-commit refuses added files over 1024 kB (weights go through large_files.yml)
    shipped = [p for d in ("configs", "docs", "datasets") for p in (BUNDLE / d).rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 1024 * 1024 for p in shipped), [p for p in shipped if p.stat().st_size > 2**20]
    # its other hooks: check-yaml, trailing-whitespace, end-of-file-fixer, mixed-line-ending
    for path in [BUNDLE / "LICENSE"] + [p for p in shipped if p.suffix in {".json", ".yaml", ".md", ".conf"}]:
        text = path.read_bytes().decode("utf-8")
        assert "\r" not in text and not re.search(r"[ \t]$", text, re.M), path
        assert text.endswith("\n") and not text.endswith("\n\n"), path
        if path.suffix == ".yaml":
            yaml.safe_load(text)


def test_metadata_validates_against_the_schema_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"the metadata schema is not at {SCHEMA} (../shared/reference beside the repository)")
    meta = _meta()
    assert meta["schema"].rsplit("/", 1)[1] == SCHEMA.name.removeprefix("monai_bundle_")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("verify_metadata tried to download")

    import monai.apps.utils
    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_network)
    monkeypatch.setattr(monai.apps.utils, "urlopen", no_network)
    schema = tmp_path / "eval" / "schema.json"  # where the zoo's CI keeps it
    schema.parent.mkdir()
    shutil.copyfile(SCHEMA, schema)
    verify_metadata(meta_file=str(META_FILE), filepath=str(schema), hash_val=SCHEMA_MD5)

    # the per-generator entries are validated too (the schema's "<network>_data_format" pattern)
    meta["generator_mri2ct_data_format"]["inputs"]["image"]["num_channels"] = "one"
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'one' is not of type 'integer'"):
        verify_metadata(meta_file=str(broken), filepath=str(schema), hash_val=SCHEMA_MD5)


def test_metadata_is_formatted_as_the_zoo_pre_commit_hook_leaves_it() -> None:
    # pre-commit-hooks pretty-format-json --autofix --no-sort-keys --indent=4: json.dumps with ensure_ascii=True
    # of the file loaded into dicts in their order, plus a newline; the file is read and written as UTF-8
    text = META_FILE.read_bytes().decode("utf-8")
    assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"


def test_metadata_pins_the_installed_versions() -> None:
    meta = _meta()
    installed = importlib.metadata.version
    assert meta["monai_version"] == installed("monai")
    # the zoo installs torch==<pytorch_version>: the build tag (+cpu, +cu128) is not part of the pin
    assert meta["pytorch_version"] == installed("torch").split("+")[0]
    assert meta["numpy_version"] == installed("numpy")
    pinned = meta["required_packages_version"]
    assert {name: installed(name) for name in pinned} == pinned


def test_metadata_describes_each_generator() -> None:
    meta = _meta()
    train = ConfigParser.load_config_file(str(CONFIGS / "train.yaml"))
    inference = ConfigParser.load_config_file(str(CONFIGS / "inference.yaml"))
    channels = 2 * train["context_slices"] + 1  # the generators' input channels (train.yaml: generator_def)
    size = [train["image_size"]] * 2
    for direction in DIRECTIONS:
        fmt = meta[f"generator_{direction}_data_format"]
        image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
        source, target = ("CT", "MR") if direction == "ct2mri" else ("MR", "CT")
        assert image["modality"] == source and pred["modality"].startswith(target)
        assert (image["num_channels"], pred["num_channels"]) == (channels, 1)
        for tensor in (image, pred):
            assert tensor["spatial_shape"] == size
            assert tensor["value_range"] == [-1, 1]
            assert tensor["dtype"] == "float32"
    # verify_net_in_out reads network_data_format: it is network_def in inference.yaml's default direction
    assert meta["network_data_format"] == meta[f"generator_{inference['direction']}_data_format"]
    assert inference["direction"] == "ct2mri"


def test_verify_net_in_out_as_the_zoo_ci_runs_it() -> None:
    # ci/verify_bundle.py verify_data_shape: no checkpoint, so network_def is the default full-size ResNet-9
    verify_net_in_out(net_id="network_def", meta_file=str(META_FILE), config_file=str(CONFIGS / "inference.yaml"),
                      bundle_root=str(BUNDLE))


# ---------------------------------------------------------------------------------------------- the model card
def test_model_card_has_the_zoo_template_sections_and_every_reference() -> None:
    text = CARD.read_text(encoding="utf-8")
    headings = re.findall(r"^#{2,3} (.+)$", text, re.M)
    assert [h for h in CARD_SECTIONS if h not in headings] == []
    bibtex = re.search(r"```bibtex\n(.*?)```", text, re.S).group(1)
    titles = [re.sub(r"[{}]", "", t) for t in re.findall(r"^\s*title\s*=\s*\{(.*)\},?$", bibtex, re.M)]
    references = _meta()["references"]
    assert len(titles) == len(references)
    for title in titles:
        assert any(title in ref for ref in references), title


def test_model_card_quotes_only_measured_figures() -> None:
    """Every decimal figure under Performance and System configuration is in docs/results.md or docs/benchmarks.md."""
    text = CARD.read_text(encoding="utf-8")
    sources = "".join((BUNDLE / "docs" / name).read_text(encoding="utf-8") for name in ("results.md", "benchmarks.md"))
    for section in ("Performance", "System configuration"):
        body = re.search(rf"^## {section}\n(.*?)^## ", text, re.M | re.S).group(1)
        figures = re.findall(r"\d[\d,]*\.\d+|\d{1,3}(?:,\d{3})+", body)
        assert figures, section
        assert [f for f in figures if f not in sources and f not in ("2.13.0", "1.6.1", "3.11")] == [], section


def test_model_card_commands_name_bundle_files_and_known_ids() -> None:
    commands = _card_commands("python", "-m", "monai.bundle")
    assert {c[3] for c in commands} >= {"run", "verify_net_in_out", "ckpt_export", "verify_metadata"}
    for argv in commands:
        assert not [a for a in argv if a.startswith("bundle/")], argv  # paths relative to the bundle root
        options = _options(argv)
        for key in ("config_file", "meta_file", "logging_file"):
            if key in options:
                for name in _files(options[key]):
                    assert (BUNDLE / name).is_file(), (name, argv)
        if "config_file" not in options:
            continue
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / f) for f in _files(options["config_file"])])
        function = {"run": None, "verify_net_in_out": verify_net_in_out, "ckpt_export": ckpt_export}[argv[3]]
        arguments = set(inspect.signature(function).parameters) if function else {"meta_file", "logging_file"}
        unknown = [k for k in options if k not in arguments | {"config_file"} and k.replace("::", "#") not in parser]
        assert unknown == [], argv


@pytest.fixture(scope="module")
def trained_bundle(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundle in which the model card's training command (tiny overrides added) ran for one epoch,
    and its `cp` put the checkpoint at models/model.pt."""
    root = tmp_path_factory.mktemp("zoo") / "bundle"
    outputs = ("runs", "eval", "data", "input", "synthetic", "__pycache__", "*.pt", "*.ts")  # a user's, if any
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns(*outputs))
    (root / "models").mkdir(exist_ok=True)
    train = next(c for c in _card_commands("python", "-m", "monai.bundle", "run")
                 if _option(c, "config_file") == "configs/train.yaml")
    train = [str(tiny_phantoms) if a == "DATA" else a for a in train]
    tiny = [str(a) for k, v in {"n_epochs": 1, "n_epochs_decay": 0, **TINY_OVERRIDES}.items() for a in (f"--{k}", v)]
    _run_python(train, root, *tiny)
    (copy,) = _card_commands("cp")
    shutil.copyfile(root / copy[1], root / copy[2])
    return root


def _run_card_command(argv: list[str], bundle_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a card command ``python -m monai.bundle SUB ...`` in this process, from ``bundle_root``: the same
    Fire command line over the same module as ``python -m monai.bundle``, without starting Python and MONAI
    again (the training fixture runs the real entry point)."""
    import fire
    import monai.bundle.__main__ as bundle_cli

    assert argv[:3] == ["python", "-m", "monai.bundle"], argv
    monkeypatch.chdir(bundle_root)
    fire.Fire(bundle_cli, command=argv[3:], name="monai.bundle")


def test_card_verify_net_in_out_passes_on_a_trained_checkpoint(trained_bundle: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (command,) = _card_commands("python", "-m", "monai.bundle", "verify_net_in_out")
    _run_card_command(command, trained_bundle, monkeypatch)  # raises on a mismatch


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / torch.jit.load in torch 2.13
def test_card_ckpt_export_gives_each_generator_of_a_trained_checkpoint(trained_bundle: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _card_commands("python", "-m", "monai.bundle", "ckpt_export")
    assert sorted(_option(c, "key_in_ckpt") for c in commands) == [f"generator_{d}" for d in DIRECTIONS]
    for command in commands:
        _run_card_command(command, trained_bundle, monkeypatch)
    checkpoint = trained_bundle / "models" / "model.pt"
    size = TINY_OVERRIDES["image_size"]
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outputs = {}
    for direction in DIRECTIONS:
        (command,) = [c for c in commands if _option(c, "key_in_ckpt") == f"generator_{direction}"]
        extra = {"metadata.json": ""}
        scripted = torch.jit.load(str(trained_bundle / _option(command, "filepath")), _extra_files=extra)
        reference, _ = load_generator(checkpoint, direction)
        with torch.no_grad():
            outputs[direction] = scripted(x)
            torch.testing.assert_close(outputs[direction], reference(x))
        assert json.loads(extra["metadata.json"])[f"generator_{direction}_data_format"]
    assert not torch.allclose(outputs["ct2mri"], outputs["mri2ct"])  # --key_in_ckpt picked two different generators


def test_each_generator_data_format_verifies_on_a_trained_network_def(trained_bundle: Path) -> None:
    meta = _meta()
    for direction in DIRECTIONS:
        verify_net_in_out(net_id="network_def", meta_file=str(trained_bundle / "configs" / "metadata.json"),
                          config_file=str(trained_bundle / "configs" / "inference.yaml"),
                          bundle_root=str(trained_bundle), direction=direction, device="cpu",
                          **{"_meta_#network_data_format": meta[f"generator_{direction}_data_format"]})


def test_inference_properties_on_the_trained_bundle(trained_bundle: Path, tiny_phantoms: Path) -> None:
    # as the zoo's verify_bundle_properties builds it: bundle_root, the bundle's own configs, models/model.pt
    configs = trained_bundle / "configs"
    workflow = ConfigWorkflow(workflow_type="inference", bundle_root=str(trained_bundle),
                              config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
                              logging_file=str(configs / "logging.conf"), input=str(tiny_phantoms / "volumes" / "ct"))
    workflow.initialize()
    assert not workflow.check_properties()
    assert workflow.parser.get_parsed_content("checkpoint") == f"{trained_bundle}/models/model.pt"
