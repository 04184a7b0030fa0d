"""Benchmark the DICOM node against the file road, in one run, on the same series.

Node: a real Orthanc (temporary, localhost) as the destination and ``ctmri serve`` as child processes; N phantom
series of S slices are sent to the node by C-STORE over ``--associations`` concurrent associations (as a router
forwards series as they arrive). Per series: latency from its last instance acknowledged by the node to Orthanc's
acknowledgement of the derived series' last instance (from the node's journal; every derived series is then
checked in Orthanc); overall: series per minute from the first send to the last derived series stored.
File road: the same series written as DICOM folders and converted by ``ctmri convert --dicom`` in this process
(model load included, as a user runs it; the interpreter start is not).
Prints one JSON line; ``throughput_ratio`` = node series/min / file series/min.

    PYTHONPATH=. python scripts/bench_node.py --series 8 --slices 16 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dicom_net import (  # noqa: E402
    NodeProcess,
    Orthanc,
    c_store,
    free_port,
    journal_rows,
    phantom_series,
    wait_for,
)


def tiny_checkpoint(path: Path, size: int, ngf: int, blocks: int = 2) -> Path:
    """Two untrained ResNet generators (``ngf``, ``blocks`` residual blocks, ``size`` px frames) with their
    contract (speed does not depend on the weights)."""
    import torch

    from ctmri_monai.io.checkpoint_file import atomic_torch_save
    from ctmri_monai.networks import define_generator
    from ctmri_monai.spec import CTIntensity, ModelSpec, NetworkSpec, SliceGeometry

    torch.manual_seed(0)
    spec = ModelSpec(network=NetworkSpec(backbone="resnet", ngf=ngf, n_blocks=blocks, num_downs=5),
                     ct=CTIntensity(window=(-1000.0, 1000.0)),
                     geometry=SliceGeometry(image_size=size, framing="spacing", pixdim=(6.0, 6.0)))
    data = {f"generator_{d}": define_generator(**spec.generator_kwargs()).state_dict() for d in ("ct2mri", "mri2ct")}
    atomic_torch_save(data | {"model_spec": spec.state_dict()}, path)
    return path


def run_node(work: Path, checkpoint: Path, series: list[list], associations: int) -> dict:
    port = free_port()
    orthanc = Orthanc(work / "orthanc", port)
    node = NodeProcess(checkpoint, work / "spool", port, "--allow-aet", "ORTHANC", "--destination",
                       f"ORTHANC@127.0.0.1:{orthanc.dicom}", "--idle-seconds", "30")
    try:
        sent: dict[str, float] = {}

        def feed(share: list[list]) -> None:
            for s in share:
                assert c_store(s, port) == [0] * len(s), "the node refused an instance"
                sent[str(s[0].SeriesInstanceUID)] = time.time()

        t0 = time.time()
        threads = [threading.Thread(target=feed, args=(series[k::associations],)) for k in range(associations)]
        for t in threads:
            t.start()

        def delivered() -> dict[str, float] | None:
            """When Orthanc acknowledged each derived series' last instance (the node's journal, read cheaply:
            polling Orthanc itself would take CPU from what is measured)."""
            rows = {r["series_uid"]: r["sent_at"] for r in journal_rows(work / "spool") if r["status"] == "sent"}
            return rows if len(rows) == len(series) else None

        done = wait_for(delivered, 1800, "every derived series", every=0.05)
        for t in threads:
            t.join()
        found = orthanc.request("POST", "/tools/find", b'{"Level": "Series", "Query": {}, "Expand": true}')
        synthetic = [x for x in found if x["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC")]
        assert len(synthetic) == len(series) and all(len(x["Instances"]) == len(series[0]) for x in synthetic)
        total = max(done.values()) - t0
        latency = sorted(done[k] - sent[k] for k in sent)
        return {"seconds": round(total, 2), "series_per_min": round(60 * len(series) / total, 2),
                "latency_median_s": round(latency[len(latency) // 2], 2), "latency_max_s": round(latency[-1], 2)}
    finally:
        node.kill(15)
        orthanc.stop()


def run_files(work: Path, checkpoint: Path, series: list[list]) -> dict:
    from ctmri_monai.apps.cli import main as ctmri

    folder = work / "files"
    for k, s in enumerate(series):
        for j, ds in enumerate(s):
            (folder / f"s{k:03d}").mkdir(parents=True, exist_ok=True)
            ds.save_as(folder / f"s{k:03d}" / f"{j:04d}.dcm", enforce_file_format=True)
    t0 = time.perf_counter()
    status = ctmri(["convert", str(folder), "--direction", "ct2mri", "--checkpoint", str(checkpoint), "--output-dir",
                    str(work / "out"), "--dicom", "--device", "cpu", "--no-progress"])
    total = time.perf_counter() - t0
    assert status == 0, "ctmri convert failed"
    return {"seconds": round(total, 2), "series_per_min": round(60 * len(series) / total, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks (9: the paper's ResNet-9)")
    parser.add_argument("--associations", type=int, default=4, help="concurrent associations feeding the node")
    parser.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: a tiny untrained one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ctmri-bench-node-") as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(work / "m.pt", args.size,
                                                                                    args.ngf, args.blocks)
        series = [phantom_series("CT", args.slices, args.size, seed=k) for k in range(args.series)]
        node = run_node(work, checkpoint, series, args.associations)
        files = run_files(work, checkpoint, series)
    print(json.dumps({"machine": f"{platform.machine()} {os.cpu_count()} cores", "series": args.series,
                      "slices": args.slices, "size": args.size, "ngf": args.ngf, "blocks": args.blocks,
                      "associations": args.associations, "node": node, "files": files,
                      "throughput_ratio": round(node["series_per_min"] / files["series_per_min"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
